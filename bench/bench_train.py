"""Training throughput: the inner step on synthetic inputs (warm-up, then timed steps), or a
whole Ray Train run on tiny synthetic data. The last line printed is one JSON object.

    python bench/bench_train.py --model K16-H256 --classes 3862 --batch-size 80   # 1 worker, the step
        # 2 CPU cores: ~1 min (15 steps of ~0.4-0.8 s, after building the model)
    python bench/bench_train.py --grid paper --classes 3862 --gpu-type T4         # a grid: GPU-hours
        # run it on a node of the GPU type it names (28 models × 13 steps; not timed here: no GPU)
    python bench/bench_train.py --ray-workers 2                                   # tiny 2-worker run
        # 2 CPU cores: ~1 min, most of it Ray's start-up

Step mode builds the model and optimizer under a one-worker MultiWorkerMirroredStrategy, as
each Ray worker does, and feeds random frames padded to --max-frames (no data reading).
Grid mode times every model of --grid in turn, each at the batch size the sweep would give
it on --gpu-type, and projects the hours to train each for --total-steps (the paper: 200k):
run it on one node of each GPU type to replace the estimated cost table in cluster/README.md
with measured GPU-hours. Data loading is not included, so these are lower bounds.
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


def bench_step(args: argparse.Namespace, model_name: str | None = None, batch_size: int | None = None,
               strategy=None) -> dict:
    import numpy as np
    import tensorflow as tf

    from raytrain8m.models import ModelConfig, build, flops_per_video
    from raytrain8m.train.config import TrainConfig
    from raytrain8m.train.loop import make_optimizer, make_train_step

    batch_size = batch_size or args.batch_size
    model_config = ModelConfig.from_name(model_name or args.model, num_classes=args.classes,
                                         iterations=args.iterations)
    config = TrainConfig(model=model_config, batch_size=batch_size, max_frames=args.max_frames)
    strategy = strategy or tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = build(model_config, seed=0)
        optimizer = make_optimizer(config)
        optimizer.build([variable for variable in model.variables.values() if variable.trainable])
    step = make_train_step(model, optimizer, strategy, config)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (batch_size, args.max_frames, model_config.feature_size), dtype=np.uint8)
    num_frames = rng.integers(args.max_frames // 2, args.max_frames + 1, batch_size).astype(np.int32)
    labels = (rng.random((batch_size, args.classes)) < 3 / args.classes).astype(np.uint8)  # as the step takes them
    for _ in range(args.warmup):
        float(step(frames, num_frames, labels))
    start = time.perf_counter()
    for _ in range(args.steps):
        float(step(frames, num_frames, labels))
    seconds = time.perf_counter() - start
    examples_per_sec = args.steps * batch_size / seconds
    return {"mode": "step", "model": model_config.name, "classes": args.classes, "batch_size": batch_size,
            "max_frames": args.max_frames, "iterations": args.iterations, "warmup_steps": args.warmup,
            "timed_steps": args.steps, "seconds_per_step": seconds / args.steps,
            "examples_per_sec": examples_per_sec,
            "forward_gflops_per_sec": examples_per_sec * flops_per_video(model_config) / 1e9,
            "devices": [device.name for device in tf.config.list_logical_devices()],
            "cpus": os.cpu_count()}


def bench_grid(args: argparse.Namespace) -> dict:
    """Every model of the grid at its sweep batch size on --gpu-type: hours for --total-steps."""
    import gc

    import tensorflow as tf
    from tqdm import tqdm

    from raytrain8m.models import ModelConfig
    from raytrain8m.runtime.gpus import profile
    from raytrain8m.sweep.placement import largest_batch, parse_grid

    memory = profile(args.gpu_type).memory_gib if args.gpu_type else None
    if args.gpu_type and not tf.config.list_physical_devices("GPU"):
        logging.warning("--gpu-type %s, but TensorFlow sees no GPU here: these are CPU timings",
                        args.gpu_type)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # one per process, shared by all models
    rows, skipped = [], []
    for config in tqdm(parse_grid(args.grid), desc=f"timing on {args.gpu_type or 'this device'}", unit="model"):
        config = ModelConfig.from_name(config.name, num_classes=args.classes, iterations=args.iterations)
        batch_size = largest_batch(config, memory) if memory else args.batch_size
        if batch_size is None:
            skipped.append(config.name)  # the sweep would send it to a larger card
            continue
        figures = bench_step(args, config.name, batch_size, strategy)
        rows.append({"model": config.name, "batch_size": batch_size,
                     "seconds_per_step": figures["seconds_per_step"],
                     "examples_per_sec": figures["examples_per_sec"],
                     "hours": args.total_steps * figures["seconds_per_step"] / 3600})
        gc.collect()
    print(f"\n{'model':<12}{'batch':>7}{'s/step':>9}{'ex/s':>9}{f'hours ({args.total_steps} steps)':>22}")
    for row in rows:
        print(f"{row['model']:<12}{row['batch_size']:>7}{row['seconds_per_step']:>9.3f}"
              f"{row['examples_per_sec']:>9.1f}{row['hours']:>22.1f}")
    if skipped:
        print(f"too large for {args.gpu_type} at any batch size: {', '.join(skipped)}")
    total = sum(row["hours"] for row in rows)
    print(f"GPU-hours for the {len(rows)} models that fit: {total:.0f}\n")
    return {"mode": "grid", "gpu_type": args.gpu_type, "classes": args.classes, "total_steps": args.total_steps,
            "models": rows, "skipped": skipped, "gpu_hours": total,
            "devices": [device.name for device in tf.config.list_logical_devices()]}


def bench_ray(args: argparse.Namespace) -> dict:
    import ray

    from raytrain8m.data import generate
    from raytrain8m.models import ModelConfig
    from raytrain8m.records import tracking
    from raytrain8m.runtime import localray
    from raytrain8m.train.config import TrainConfig
    from raytrain8m.train.driver import fit

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate(str(data), videos=160, classes=20, max_frames=12, shards=2, seed=0, progress=False)
        config = TrainConfig(
            model=ModelConfig(cluster_size=4, hidden_size=16, num_classes=20, iterations=10),
            train_data=str(data / "train*.tfrecord"), validate_data=str(data / "validate*.tfrecord"),
            batch_size=8, max_steps=args.warmup + args.steps, checkpoint_every=args.warmup + args.steps,
            eval_every=0, eval_batches=1, log_every=args.warmup, num_workers=args.ray_workers,
            max_frames=12, max_failures=0, out=str(Path(tmp) / "out"), run_name="bench",
            tracking_uri=f"sqlite:///{tmp}/mlflow.db")
        localray.start(num_cpus=max(os.cpu_count() or 1, args.ray_workers + 2))  # as every command starts Ray
        start = time.perf_counter()
        result = fit(config, resources_per_worker={"CPU": 0.5})
        wall = time.perf_counter() - start
        # Each report window times only its steps; the first window (the warm-up) is left out.
        history = tracking.client(config.tracking_uri).get_metric_history(result.mlflow_run_id, "examples_per_sec")
        timed = [metric.value for metric in history if metric.step > args.warmup]
        ray.shutdown()
    return {"mode": "ray", "model": "K4-H16", "classes": 20, "workers": args.ray_workers,
            "batch_size_per_worker": 8, "warmup_steps": args.warmup, "timed_steps": args.steps,
            "examples_per_sec": sum(timed) / len(timed), "wall_seconds_incl_startup": wall,
            "cpus": os.cpu_count()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="K16-H256")
    parser.add_argument("--classes", type=int, default=3862)
    parser.add_argument("--batch-size", type=int, default=80)
    parser.add_argument("--max-frames", type=int, default=300)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (default: %(default)s; with "
                                                               "--ray-workers, --steps must be a multiple of it)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--ray-workers", type=int, default=0, help="N > 0: a tiny Ray Train run on N workers")
    parser.add_argument("--grid", help="time every model of this grid (names, or `paper` for the paper's 28)")
    parser.add_argument("--gpu-type", help="--grid: batch sizes as the sweep plans them for this GPU type "
                                           "(default: --batch-size for every model)")
    parser.add_argument("--total-steps", type=int, default=200_000,
                        help="--grid: steps to project the hours for (default: %(default)s, the paper's)")
    args = parser.parse_args()
    if args.ray_workers and args.steps % args.warmup:
        parser.error("--ray-workers: --steps must be a multiple of --warmup (one report window each)")
    logging.basicConfig(level=logging.WARNING)
    if args.ray_workers:
        figures = bench_ray(args)
    elif args.grid:
        figures = bench_grid(args)
    else:
        figures = bench_step(args)
    for key, value in figures.items():
        if key != "models":
            print(f"{key:>28}: {value}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
