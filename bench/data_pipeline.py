"""Training input speed: our path (pyarrow reader -> Ray Data tensor columns -> the step's uint8
tensors, as a Ray Train worker consumes it) vs TensorFlow's own (TFRecordDataset -> batched
parse_sequence_example -> decode_raw(fixed_length) -> dequantize, dense [64, 300, 1152]), on
the same official-format shards, one run each. The last line printed is one JSON object.

    python bench/data_pipeline.py                     # 2 CPU cores: ~40 s (writing the shards included)
    python bench/data_pipeline.py --data 'data/yt8m/train*.tfrecord'   # your own shards
    python bench/data_pipeline.py --smoke             # tiny, ~1 min

Ours ends at the tensors the step takes (uint8 frames, int32 num_frames, uint8 labels: the step
dequantizes them on its device); `ours_dequantized_videos_per_s` adds that dequantization here,
on the CPU, for a like-for-like float [64, 300, 1152]. Both start timing at their first batch
(Ray's and Ray Data's start-up are not timed). An epoch of the real set is hours long, so by
default both read one epoch of at least `--min-epoch-videos`, the shards linked under as many
names as that takes (the same bytes, from the page cache, for both); with `--epochs` 2 or more
the restart of each further epoch (~0.6 s of Ray Data's start-up here) is timed too.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def ours(glob: str, args: argparse.Namespace, dequantize: bool) -> float:
    """Videos/s through the trainer's dataset (`driver.train_dataset`) and the worker's
    `batches` and `Prefetcher`."""
    import tensorflow as tf

    from raytrain8m.models import ModelConfig
    from raytrain8m.train.config import TrainConfig
    from raytrain8m.train.driver import train_dataset
    from raytrain8m.train.loop import dequantize_frames
    from raytrain8m.train.prefetch import Prefetcher, batches

    config = TrainConfig(model=ModelConfig(num_classes=args.classes), train_data=glob, batch_size=args.batch_size,
                         max_frames=args.max_frames, shuffle_buffer=args.shuffle_buffer, seed=0)
    dataset, options = train_dataset(config)  # the trainer's own
    dataset.context.execution_options = options
    [shard] = dataset.streaming_split(1, equal=True)  # what Ray Train hands a single worker
    per_epoch = args.videos_per_epoch // args.batch_size
    to_float = tf.function(dequantize_frames)
    data = Prefetcher(batches(shard, config), config.prefetch_batches)
    next(data)  # Ray Data's start (executor, split coordinator): timed apart, as `first_batch_s`
    start = time.perf_counter()
    for _ in range(per_epoch * args.epochs - 1):
        frames, num_frames, labels = next(data)
        if dequantize:
            frames = to_float(frames)
        frames.shape  # noqa: B018 (the tensor exists)
    seconds = time.perf_counter() - start
    data.close()
    return (per_epoch * args.epochs - 1) * args.batch_size / seconds


def tf_data(glob: str, args: argparse.Namespace) -> float:
    """Videos/s through TensorFlow's own reader, parser and dequantization."""
    import tensorflow as tf

    from raytrain8m.data.schema import _QUANT_BIAS, _QUANT_SCALE

    context = {"id": tf.io.FixedLenFeature([], tf.string), "labels": tf.io.VarLenFeature(tf.int64)}
    sequence = {name: tf.io.FixedLenSequenceFeature([], tf.string) for name in ("rgb", "audio")}

    def parse(serialized):
        ctx, seq, lengths = tf.io.parse_sequence_example(serialized, context_features=context,
                                                         sequence_features=sequence)
        rgb = tf.io.decode_raw(seq["rgb"], tf.uint8, fixed_length=1024)
        audio = tf.io.decode_raw(seq["audio"], tf.uint8, fixed_length=128)
        frames = tf.cast(tf.concat([rgb, audio], -1), tf.float32) * _QUANT_SCALE + _QUANT_BIAS
        frames = tf.pad(frames, [[0, 0], [0, args.max_frames - tf.shape(frames)[1]], [0, 0]])
        labels = tf.sparse.to_indicator(ctx["labels"], args.classes)
        return tf.ensure_shape(frames, [None, args.max_frames, 1152]), tf.cast(lengths["rgb"], tf.int32), labels

    files = tf.io.gfile.glob(glob)
    dataset = (tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)
               .batch(args.batch_size, drop_remainder=True)
               .map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))
    per_epoch = args.videos_per_epoch // args.batch_size
    batches, start = -1, None
    for epoch in range(args.epochs):
        for frames, _, _ in dataset.take(per_epoch):
            batches += 1
            if start is None:  # the first batch untimed, as for ours
                start = time.perf_counter()
    seconds = time.perf_counter() - start
    return batches * args.batch_size / seconds


def _long_epoch(glob: str, out: Path, min_videos: int) -> tuple[str, int, int]:
    """(a glob of the shards of `glob` linked under `out` as many times as an epoch of at least
    `min_videos` takes, the videos in that epoch, the number of times)."""
    from raytrain8m.data import read_records
    from raytrain8m.data.files import expand

    filesystem, files = expand(glob)
    videos = sum(1 for path in files for _ in read_records(path, filesystem))  # framing and CRCs, no decode
    copies = max(1, -(-min_videos // videos))
    if copies == 1:
        return glob, videos, 1
    out.mkdir()
    for copy in range(copies):
        for i, path in enumerate(files):
            (out / f"{copy:03d}-{i:05d}.tfrecord").symlink_to(Path(path).resolve())
    return str(out / "*.tfrecord"), videos * copies, copies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="glob of frame-level shards (default: synthetic ones written to a temp dir)")
    parser.add_argument("--videos", type=int, default=640, help="synthetic videos to write (default: %(default)s)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--classes", type=int, default=3862)
    parser.add_argument("--max-frames", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--min-epoch-videos", type=int, default=8000,
                        help="link the shards under more names until an epoch holds this many (default: %(default)s)")
    parser.add_argument("--shuffle-buffer", type=int, default=None, help="default: TrainConfig's")
    parser.add_argument("--smoke", action="store_true", help="tiny: 160 videos of 30 frames, 20 classes")
    args = parser.parse_args()
    if args.smoke:
        args.videos, args.shards, args.classes, args.max_frames, args.batch_size = 160, 2, 20, 30, 16
        args.min_epoch_videos = 800
    logging.basicConfig(level=logging.WARNING)
    import ray

    from raytrain8m.data import generate
    from raytrain8m.train.config import TrainConfig

    if args.shuffle_buffer is None:
        args.shuffle_buffer = TrainConfig.shuffle_buffer
    with tempfile.TemporaryDirectory() as tmp:
        glob = args.data
        if glob is None:
            generate(tmp, videos=args.videos, classes=args.classes, max_frames=args.max_frames,
                     shards=args.shards, seed=0, progress=False)
            glob = str(Path(tmp) / "train*.tfrecord")
        glob, args.videos_per_epoch, args.copies = _long_epoch(glob, Path(tmp) / "epoch", args.min_epoch_videos)
        figures = {"tf_data_videos_per_s": tf_data(glob, args)}
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, 2) + 1, include_dashboard=False,
                 log_to_driver=False)
        try:
            figures["ours_videos_per_s"] = ours(glob, args, dequantize=False)
            figures["ours_dequantized_videos_per_s"] = ours(glob, args, dequantize=True)
        finally:
            ray.shutdown()
    figures["ratio"] = figures["ours_videos_per_s"] / figures["tf_data_videos_per_s"]
    figures.update(videos_per_epoch=args.videos_per_epoch, shard_copies=args.copies, epochs=args.epochs, batch_size=args.batch_size,
                   max_frames=args.max_frames, classes=args.classes, shuffle_buffer=args.shuffle_buffer,
                   cpus=os.cpu_count(), load_average_1m=os.getloadavg()[0])
    for key, value in figures.items():
        print(f"{key:>32}: {value:.1f}" if isinstance(value, float) else f"{key:>32}: {value}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
