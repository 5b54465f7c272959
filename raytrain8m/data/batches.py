"""Batches for the trainer and inference: local reading without Ray, and model inputs.

`to_model_inputs` accepts both the dict-of-numpy batches of `iter_batches` here and those of
Ray Data's `iter_batches(batch_format="numpy")` over `read_dataset` (binary columns as object
arrays of bytes, list columns as object arrays of arrays), and pyarrow tables.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa

from raytrain8m.data.examples import decode_records
from raytrain8m.data.files import expand
from raytrain8m.data.schema import AUDIO_SIZE, FEATURE_SIZE, MAX_FRAMES, RGB_SIZE, DataError, dequantize
from raytrain8m.data.tfrecord import ReadStats, iter_framed, open_input


def table_to_numpy(table: pa.Table | pa.RecordBatch) -> dict[str, np.ndarray]:
    """Columns as numpy, the way Ray Data's numpy batches hold them."""
    out = {}
    for name, column in zip(table.column_names, table.columns):
        if pa.types.is_fixed_size_list(column.type):  # mean_rgb / mean_audio -> [B, size]
            flat = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
            out[name] = flat.flatten().to_numpy().reshape(len(column), column.type.list_size)
        elif column.type in (pa.binary(), pa.string()) or pa.types.is_list(column.type):
            values = column.to_pylist()
            array = np.empty(len(values), dtype=object)
            if pa.types.is_list(column.type):
                values = [np.asarray(v, np.int32) for v in values]
            array[:] = values
            out[name] = array
        else:
            out[name] = column.to_numpy()
    return out


def iter_tables(glob_or_paths: str | Sequence[str], batch_size: int, num_classes: int | None = None,
                video_level: bool = False, skip_corrupt: bool = False, max_frames: int = MAX_FRAMES,
                stats: ReadStats | None = None) -> Iterator[pa.Table]:
    """Tables of `batch_size` videos (the last may be smaller), files in sorted order."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    filesystem, paths = expand(glob_or_paths)
    stats = stats if stats is not None else ReadStats()
    pending: list[pa.RecordBatch] = []
    rows = 0

    def full_batches() -> Iterator[pa.Table]:
        nonlocal pending, rows
        while rows >= batch_size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, batch_size)
            rest = table.slice(batch_size)
            pending, rows = rest.to_batches(), rest.num_rows

    for path in paths:
        with open_input(filesystem, path) as stream:
            chunk = []
            for item in iter_framed(stream, path, skip_corrupt, stats):
                chunk.append(item)
                if len(chunk) == batch_size:
                    pending.append(decode_records(chunk, path, num_classes, max_frames,
                                                  video_level, skip_corrupt, stats))
                    rows += pending[-1].num_rows
                    chunk = []
                    yield from full_batches()
            if chunk:
                pending.append(decode_records(chunk, path, num_classes, max_frames, video_level,
                                              skip_corrupt, stats))
                rows += pending[-1].num_rows
                yield from full_batches()
    if rows:
        yield pa.Table.from_batches(pending)


def iter_batches(glob_or_paths: str | Sequence[str], batch_size: int, num_classes: int | None = None,
                 video_level: bool = False, skip_corrupt: bool = False,
                 max_frames: int = MAX_FRAMES, stats: ReadStats | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
    """Dict-of-numpy batches read locally (no Ray): id, labels, num_frames, rgb, audio
    (or id, labels, mean_rgb, mean_audio with `video_level`)."""
    for table in iter_tables(glob_or_paths, batch_size, num_classes, video_level, skip_corrupt,
                             max_frames, stats):
        yield table_to_numpy(table)


def _rows(column) -> list:
    if isinstance(column, (pa.Array, pa.ChunkedArray)):
        return column.to_pylist()
    return list(column)


def to_model_inputs(batch, num_classes: int, max_frames: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(frames float32 [B, F, 1152] dequantized rgb‖audio zero-padded to F = max_frames or the
    batch's longest video, num_frames int32 [B], labels float32 multi-hot [B, V] or None when
    no video of the batch has labels, e.g. the test split). Video-level batches give F = 1."""
    if isinstance(batch, (pa.Table, pa.RecordBatch)):
        batch = {name: batch.column(name) for name in batch.column_names}
    if "rgb" in batch:
        num_frames = np.asarray(_rows(batch["num_frames"]), dtype=np.int32)
        length = int(max_frames if max_frames is not None else num_frames.max(initial=1))
        frames = np.zeros((len(num_frames), length, FEATURE_SIZE), np.float32)
        for name, offset, size in (("rgb", 0, RGB_SIZE), ("audio", RGB_SIZE, AUDIO_SIZE)):
            for i, (data, count) in enumerate(zip(_rows(batch[name]), num_frames)):
                if len(data) != count * size:
                    raise DataError(None, None, f"video {i} of the batch: {name} has {len(data)} "
                                                f"bytes for {count} frames of {size}")
                used = min(int(count), length)
                quantized = np.frombuffer(data, np.uint8, count=used * size).reshape(used, size)
                frames[i, :used, offset:offset + size] = dequantize(quantized)
        num_frames = np.minimum(num_frames, length).astype(np.int32)
    elif "mean_rgb" in batch:
        rgb, audio = (np.stack([np.asarray(row, np.float32) for row in _rows(batch[name])])
                      for name in ("mean_rgb", "mean_audio"))
        frames = np.concatenate([rgb, audio], axis=1)[:, None, :]
        num_frames = np.ones(len(frames), np.int32)
    else:
        raise DataError(None, None, f"a batch with columns {sorted(batch)}: neither frame- nor "
                                    "video-level")
    labels = None
    if "labels" in batch:
        rows = [np.asarray(row if row is not None else [], np.int64).reshape(-1)
                for row in _rows(batch["labels"])]
        if any(len(row) for row in rows):
            labels = np.zeros((len(rows), num_classes), np.float32)
            for i, row in enumerate(rows):
                if len(row) and (row.min() < 0 or row.max() >= num_classes):
                    raise DataError(None, None, f"video {i} of the batch: labels {row.tolist()} "
                                                f"outside [0, {num_classes})")
                labels[i, row] = 1.0
    return frames, num_frames, labels


def _binary_rows(column) -> list[np.ndarray]:
    """Each row of a binary column as a uint8 view, from Arrow buffers when it is Arrow (no
    Python bytes per row) or from an object array of bytes."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if isinstance(column, pa.Array):
        _, offsets, data = column.buffers()
        offsets = np.frombuffer(offsets, np.int32)[column.offset:column.offset + len(column) + 1]
        data = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
        return [data[start:end] for start, end in zip(offsets[:-1], offsets[1:])]
    return [np.frombuffer(row, np.uint8) for row in column]


def _dense_labels(column, num_classes: int) -> np.ndarray:
    """A list column of label indices -> uint8 multi-hot [B, V], checked against `num_classes`."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if isinstance(column, pa.Array):
        lengths = column.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
        values = column.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        rows = [np.asarray(row if row is not None else [], np.int64).reshape(-1) for row in column]
        lengths = np.array([len(row) for row in rows], np.int64)
        values = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    labels = np.zeros((len(lengths), num_classes), np.uint8)
    if len(values) and (values.min() < 0 or values.max() >= num_classes):
        video = int(np.repeat(np.arange(len(lengths)), lengths)[
            np.flatnonzero((values < 0) | (values >= num_classes))[0]])
        raise DataError(None, None, f"video {video} of the batch: label outside [0, {num_classes})")
    labels[np.repeat(np.arange(len(lengths)), lengths), values] = 1
    return labels


def to_step_inputs(batch, num_classes: int, max_frames: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the training step takes, still quantized: (frames uint8 [B, max_frames, 1152]
    rgb‖audio zero-padded, num_frames int32 [B], labels uint8 multi-hot [B, V]). Dequantizing
    them gives exactly `to_model_inputs` in every frame the model reads (the padding is
    dequantize(0), not 0.0: the model reads only the first num_frames). Batches already in this layout
    (`read_dataset(..., layout="tensors")`) pass through."""
    if isinstance(batch, (pa.Table, pa.RecordBatch)):
        batch = {name: batch.column(name) for name in batch.column_names}
    if "frames" in batch:
        frames = np.asarray(batch["frames"])
        if frames.dtype != np.uint8 or frames.shape[1:] != (max_frames, FEATURE_SIZE):
            raise DataError(None, None, f"frames {frames.dtype} {frames.shape[1:]}, expected uint8 "
                                        f"({max_frames}, {FEATURE_SIZE})")
        return (frames, np.asarray(batch["num_frames"], np.int32),
                np.asarray(batch["labels"], np.uint8))
    if "rgb" not in batch:
        raise DataError(None, None, f"a batch with columns {sorted(batch)}: not frame-level")
    num_frames = np.asarray(_rows(batch["num_frames"]) if isinstance(batch["num_frames"], (
        pa.Array, pa.ChunkedArray)) else batch["num_frames"], np.int32)
    frames = np.zeros((len(num_frames), max_frames, FEATURE_SIZE), np.uint8)
    for name, offset, size in (("rgb", 0, RGB_SIZE), ("audio", RGB_SIZE, AUDIO_SIZE)):
        for i, (data, count) in enumerate(zip(_binary_rows(batch[name]), num_frames)):
            if len(data) != count * size:
                raise DataError(None, None, f"video {i} of the batch: {name} has {len(data)} "
                                            f"bytes for {count} frames of {size}")
            used = min(int(count), max_frames)
            frames[i, :used, offset:offset + size] = data[:used * size].reshape(used, size)
    labels = (_dense_labels(batch["labels"], num_classes) if "labels" in batch
              else np.zeros((len(num_frames), num_classes), np.uint8))
    return frames, np.minimum(num_frames, max_frames).astype(np.int32), labels
