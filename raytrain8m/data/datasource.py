"""Ray Data over YouTube-8M TFRecords (frame- or video-level), CRCs checked, records validated.

`ray.data.read_tfrecords` parses only tf.train.Example and skips the CRCs, hence this
FileBasedDatasource. Each read task streams one file and yields Arrow tables with the columns
of raytrain8m.data.examples.FRAME_SCHEMA (or VIDEO_SCHEMA), or with `layout="tensors"` the
training step's own inputs as fixed-shape tensor columns: `frames` uint8 [max_frames, 1152],
`num_frames` int32, `labels` uint8 multi-hot [V] (and `id` unless `ids=False`). Ray Data hands
those to `iter_batches(batch_format="numpy")` as one contiguous ndarray per batch, where binary
columns come as one Python bytes object per row (docs/design.md, stack facts).
"""
from __future__ import annotations

import logging
from typing import Iterator, Sequence

import pyarrow as pa
import ray
from ray.data.datasource import FileBasedDatasource

from raytrain8m.data.examples import FRAME_SCHEMA, VIDEO_SCHEMA, decode_rows, rows_to_batch, rows_to_step_arrays
from raytrain8m.data.files import expand
from raytrain8m.data.schema import FEATURE_SIZE, MAX_FRAMES
from raytrain8m.data.tfrecord import ReadStats, iter_framed

log = logging.getLogger(__name__)

# A `layout="tensors"` block's size: 96 videos at 300 frames and 3,862 classes. What a training
# run holds in the object store is counted in blocks (each running read task's unread outputs,
# the ordered output queue, streaming_split's read-ahead to the worker), so it grows with the
# block; at Ray Data's own 128 MiB the read-ahead overflowed a 1 GiB store and spilled every
# byte a long run read (bench/train_step.py; docs/design.md, memory).
BLOCK_BYTES = 32 * 2**20
ROWS_PER_BLOCK = 256  # `layout="rows"`: videos a read task decodes at a time


def tensor_block_rows(num_classes: int, max_frames: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Videos in a `layout="tensors"` block of at most `block_bytes` (frames, labels, num_frames)."""
    return max(1, block_bytes // (max_frames * FEATURE_SIZE + num_classes + 4))


@ray.remote(num_cpus=0)
class SkipCounter:
    """Corrupt records that read tasks left out, per file, for the driver (and MLflow). A file is
    read again every epoch: its count is set, not added."""

    def __init__(self):
        self.by_file: dict[str, int] = {}

    def record(self, path: str, skipped: int) -> None:
        self.by_file[path] = max(self.by_file.get(path, 0), skipped)

    def total(self) -> tuple[int, dict[str, int]]:
        return sum(self.by_file.values()), dict(self.by_file)


class YouTube8MDatasource(FileBasedDatasource):
    """Streams TFRecord files through the masked-CRC32C reader and the record decoder."""

    _FILE_EXTENSIONS = None  # shards are named train0000.tfrecord but any name is accepted

    def __init__(self, paths: str | list[str], num_classes: int | None = None,
                 video_level: bool = False, skip_corrupt: bool = False,
                 max_frames: int = MAX_FRAMES, records_per_block: int | None = None, skip_counter=None,
                 layout: str = "rows", ids: bool = True, **file_based_args):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if layout == "tensors" and (video_level or num_classes is None):
            raise ValueError('layout="tensors" reads frame-level data and needs num_classes')
        schema = None if layout == "tensors" else VIDEO_SCHEMA if video_level else FRAME_SCHEMA
        super().__init__(paths, schema=schema, **file_based_args)
        self._layout, self._ids = layout, ids
        self._num_classes = num_classes
        self._video_level = video_level
        self._skip_corrupt = skip_corrupt
        self._max_frames = max_frames
        self._records_per_block = records_per_block or (
            ROWS_PER_BLOCK if layout == "rows" else tensor_block_rows(num_classes, max_frames))
        self._skip_counter = skip_counter  # a SkipCounter actor, or None

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        stats = ReadStats()
        chunk = []
        for item in iter_framed(f, path, self._skip_corrupt, stats):
            chunk.append(item)
            if len(chunk) == self._records_per_block:
                yield self._decode(chunk, path, stats)
                chunk = []
        if chunk:
            yield self._decode(chunk, path, stats)
        if stats.skipped:
            log.warning("%s: skipped %d corrupt records, kept %d", path, stats.skipped,
                        stats.records)
            if self._skip_counter is not None:
                self._skip_counter.record.remote(path, stats.skipped)

    def _decode(self, chunk, path: str, stats: ReadStats) -> pa.Table:
        rows = decode_rows(chunk, path, self._num_classes, self._max_frames, self._video_level,
                           self._skip_corrupt, stats)
        if self._layout == "rows":
            return pa.Table.from_batches([rows_to_batch(rows, self._video_level)])
        frames, num_frames, labels = rows_to_step_arrays(rows, self._num_classes, self._max_frames)
        # Arrow's own fixed-shape tensor type wraps the arrays without a copy (Ray's
        # ArrowTensorArray.from_numpy copies them: a third of the read task's time at 300 frames).
        columns = {"frames": pa.FixedShapeTensorArray.from_numpy_ndarray(frames), "num_frames": pa.array(num_frames),
                   "labels": pa.FixedShapeTensorArray.from_numpy_ndarray(labels)}
        if self._ids:
            columns["id"] = pa.array([row["id"] for row in rows], pa.string())
        return pa.table(columns)


LAYOUTS = ("rows", "tensors")


def read_dataset(glob_or_paths: str | Sequence[str], num_classes: int | None = None,
                 skip_corrupt: bool = False, video_level: bool = False,
                 max_frames: int = MAX_FRAMES, shuffle_files: bool = False, skip_counter=None, layout: str = "rows",
                 ids: bool = True, seed: int | None = None, task_per_file: bool = False,
                 **file_based_args) -> ray.data.Dataset:
    """A Ray Dataset of the videos in `glob_or_paths` (local, gs://, s3://, file:// or a
    registered scheme); globs are expanded here so a glob matching nothing is a DataError.

    `shuffle_files` with a `seed` shuffles the files anew at each execution (each epoch),
    the same way for the same seed; `layout` and `ids` as the module says. With
    `skip_corrupt`, a `SkipCounter` actor as `skip_counter` collects what was left out.
    `task_per_file`: one read task per file, as on the real set (3,844 files); with fewer files
    than its default parallelism, Ray Data would split each file's blocks into many small ones,
    each with its own bookkeeping. Otherwise Ray Data chooses the number of read tasks."""
    filesystem, paths = expand(glob_or_paths)
    if shuffle_files:
        file_based_args.setdefault("shuffle", "files" if seed is None else ray.data.FileShuffleConfig(
            seed=seed, reseed_after_execution=True))
    source = YouTube8MDatasource(paths, num_classes=num_classes, video_level=video_level,
                                 skip_corrupt=skip_corrupt, max_frames=max_frames, layout=layout, ids=ids,
                                 skip_counter=skip_counter,
                                 filesystem=filesystem, **file_based_args)
    return ray.data.read_datasource(source, override_num_blocks=len(paths) if task_per_file else None)


def to_parquet(dataset_or_glob: ray.data.Dataset | str | Sequence[str], out_dir: str,
               **read_args) -> str:
    """Materialise decoded videos as Parquet under `out_dir` (e.g. for many epochs: skips the
    protobuf decode and CRCs on every pass); read back with `ray.data.read_parquet(out_dir)`."""
    dataset = (dataset_or_glob if isinstance(dataset_or_glob, ray.data.Dataset)
               else read_dataset(dataset_or_glob, **read_args))
    dataset.write_parquet(out_dir)
    return out_dir
