"""The protobuf wire format of a SequenceExample, read by hand for the fast decode path.

TensorFlow writes each frame of a feature list with the same few header bytes; when a record
has exactly that canonical layout, its frames are sliced out of the bytes with numpy instead
of being parsed one protobuf object at a time (bench/bench_decode.py measures the gain).
"""
from __future__ import annotations

import numpy as np

from raytrain8m.data.schema import AUDIO_SIZE, RGB_SIZE


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _frame_header(size: int) -> np.ndarray:
    """Canonical wire bytes before each frame's data inside a serialized FeatureList:
    FeatureList.feature{ Feature.bytes_list{ BytesList.value } } (fields 1, 1, 1)."""
    value = b"\x0a" + _varint(size)
    bytes_list = b"\x0a" + _varint(len(value) + size)
    feature = b"\x0a" + _varint(len(bytes_list) + len(value) + size)
    return np.frombuffer(feature + bytes_list + value, np.uint8)


_HEADERS = {size: _frame_header(size) for size in (RGB_SIZE, AUDIO_SIZE)}


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _length_fields(buf: bytes, start: int, end: int):
    """(field number, start, end) of each length-delimited field in buf[start:end]."""
    pos = start
    while pos < end:
        key, pos = _read_varint(buf, pos)
        wire_type = key & 7
        if wire_type == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > end:
                raise ValueError("field overruns its message")
            yield key >> 3, pos, pos + length
            pos += length
        elif wire_type in (0, 1, 5):
            pos = _read_varint(buf, pos)[1] if wire_type == 0 else pos + (8 if wire_type == 1 else 4)
        else:
            raise ValueError(f"wire type {wire_type}")


def locate(record: bytes) -> tuple[tuple[int, int] | None, dict[bytes, tuple[int, int]]] | None:
    """Byte ranges of a SequenceExample's context and of each feature list, or None when the
    record is anything but plain (duplicate keys, merged fields, malformed)."""
    context, lists = None, {}
    try:
        for number, start, end in _length_fields(record, 0, len(record)):
            if number == 1:
                if context is not None:
                    return None
                context = (start, end)
            elif number == 2:
                for entry, entry_start, entry_end in _length_fields(record, start, end):
                    fields = {f: (s, e) for f, s, e in _length_fields(record, entry_start, entry_end)}
                    if entry != 1 or 1 not in fields or 2 not in fields:
                        return None
                    key = record[slice(*fields[1])]
                    if key in lists:
                        return None
                    lists[key] = fields[2]
    except (IndexError, ValueError):
        return None
    return context, lists


def canonical_frames(record: bytes, span: tuple[int, int], size: int
                      ) -> tuple[int, np.ndarray] | None:
    """(frames, their data) when a serialized FeatureList is exactly n canonical one-value
    frames of `size` bytes (as TensorFlow and we write them), else None."""
    header = _HEADERS[size]
    stride = len(header) + size
    start, end = span
    if (end - start) % stride:
        return None
    rows = np.frombuffer(record, np.uint8, count=end - start, offset=start).reshape(-1, stride)
    if not np.array_equal(rows[:, :len(header)], np.broadcast_to(header, (len(rows), len(header)))):
        return None
    return len(rows), rows[:, len(header):]  # a view: copied once, into the Arrow column
