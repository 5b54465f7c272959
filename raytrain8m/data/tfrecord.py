"""TFRecord framing (length, masked CRC32C, data, masked CRC32C) over any pyarrow filesystem.

Why not tf.io: readers run in Ray Data workers and in numpy-only tools that should not
import TensorFlow, and ray.data.read_tfrecords does not check the CRCs.
"""
from __future__ import annotations

import dataclasses
import logging
import struct
from typing import BinaryIO, Iterable, Iterator

import google_crc32c
import pyarrow.fs as pafs

from raytrain8m.data.files import resolve
from raytrain8m.data.schema import DataError
from raytrain8m.runtime import atomic

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<QI")  # uint64 length, uint32 masked crc32c of the length bytes
_FOOTER = struct.Struct("<I")   # uint32 masked crc32c of the data
_MASK_DELTA = 0xA282EAD8
READ_BUFFER = 1 << 20


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum: CRC32C rotated right by 15 bits plus a constant."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One record as it lies in a .tfrecord file."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + _FOOTER.pack(
        masked_crc32c(data))


@dataclasses.dataclass
class ReadStats:
    """What a reader saw; `skipped` counts records dropped with skip_corrupt=True."""

    records: int = 0
    skipped: int = 0
    files: int = 0


def iter_framed(stream: BinaryIO, path: str, skip_corrupt: bool = False,
                stats: ReadStats | None = None) -> Iterator[tuple[int, bytes]]:
    """Yield (record index, payload) from an open stream, checking both CRCs of every record.

    A bad data CRC skips one record when `skip_corrupt`; a bad length CRC or a truncated
    file ends the file (its framing can no longer be trusted). Either way it is logged.
    """
    stats = stats if stats is not None else ReadStats()
    stats.files += 1
    index = 0
    while True:
        header = stream.read(_HEADER.size)
        if not header:
            return
        try:
            if len(header) < _HEADER.size:
                raise DataError(path, index, f"truncated file: {len(header)}-byte record header")
            length, length_crc = _HEADER.unpack(header)
            if masked_crc32c(header[:8]) != length_crc:
                raise DataError(path, index, "length CRC mismatch (corrupt framing)")
            body = stream.read(length + _FOOTER.size)
            if len(body) < length + _FOOTER.size:
                raise DataError(path, index, f"truncated file: record of {length} bytes has "
                                             f"{max(len(body) - _FOOTER.size, 0)}")
        except DataError as error:
            if not skip_corrupt:
                raise
            stats.skipped += 1
            log.warning("skip_corrupt: %s; skipping the rest of the file", error)
            return
        data = body[:length]
        if masked_crc32c(data) != _FOOTER.unpack_from(body, length)[0]:
            error = DataError(path, index, "data CRC mismatch")
            if not skip_corrupt:
                raise error
            stats.skipped += 1
            log.warning("skip_corrupt: %s; skipping this record", error)
        else:
            stats.records += 1
            yield index, data
        index += 1


def open_input(filesystem: pafs.FileSystem, path: str):
    """A buffered, uncompressed input stream (never guess compression from the name)."""
    return filesystem.open_input_stream(path, compression=None, buffer_size=READ_BUFFER)


def read_records(path: str, filesystem: pafs.FileSystem | None = None,
                 skip_corrupt: bool = False, stats: ReadStats | None = None
                 ) -> Iterator[tuple[int, bytes]]:
    """Yield (record index, payload) of one TFRecord file on a local path or URI."""
    if filesystem is None:
        filesystem, path = resolve(path)
    try:
        stream = open_input(filesystem, path)
    except (FileNotFoundError, OSError) as error:
        raise DataError(path, None, f"cannot open: {error}") from error
    with stream:
        yield from iter_framed(stream, path, skip_corrupt=skip_corrupt, stats=stats)


def write_records(path: str, records: Iterable[bytes],
                  filesystem: pafs.FileSystem | None = None) -> int:
    """Write records to `path` (local or URI) atomically: a temporary name, renamed when complete.

    Returns the number of records. On object stores the final "rename" is a copy.
    """
    if filesystem is None:
        filesystem, path = resolve(path)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        filesystem.create_dir(parent, recursive=True)
    count = 0
    with atomic.staged_file(path, "wb", filesystem) as out:
        for record in records:
            out.write(frame_record(record))
            count += 1
    return count
