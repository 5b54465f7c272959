"""Training throughput: the inner step on synthetic inputs (warm-up, then timed steps), or a
whole Ray Train run on tiny synthetic data. The last line printed is one JSON object.

    python bench/bench_train.py --model K16-H256 --classes 3862 --batch-size 80   # 1 worker, the step
    python bench/bench_train.py --ray-workers 2                                   # tiny 2-worker run

Step mode builds the model and optimizer under a one-worker MultiWorkerMirroredStrategy, as
each Ray worker does, and feeds random frames padded to --max-frames (no data reading).
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


def bench_step(args: argparse.Namespace) -> dict:
    import numpy as np
    import tensorflow as tf

    from raytrain8m.models import MODELS, ModelConfig, flops_per_video
    from raytrain8m.train import TrainConfig
    from raytrain8m.trainloop import make_optimizer, make_train_step

    model_config = ModelConfig.from_name(args.model, num_classes=args.classes, iterations=args.iterations)
    config = TrainConfig(model=model_config, batch_size=args.batch_size, max_frames=args.max_frames)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = MODELS["gated_netvlad"](model_config, seed=0)
        optimizer = make_optimizer(config)
        optimizer.build([variable for variable in model.variables.values() if variable.trainable])
    step = make_train_step(model, optimizer, strategy, config)
    rng = np.random.default_rng(0)
    frames = rng.uniform(-2, 2, (args.batch_size, args.max_frames, model_config.feature_size)).astype(np.float32)
    num_frames = rng.integers(args.max_frames // 2, args.max_frames + 1, args.batch_size).astype(np.int32)
    labels = (rng.random((args.batch_size, args.classes)) < 3 / args.classes).astype(np.float32)
    for _ in range(args.warmup):
        float(step(frames, num_frames, labels))
    start = time.perf_counter()
    for _ in range(args.steps):
        float(step(frames, num_frames, labels))
    seconds = time.perf_counter() - start
    examples_per_sec = args.steps * args.batch_size / seconds
    return {"mode": "step", "model": model_config.name, "classes": args.classes, "batch_size": args.batch_size,
            "max_frames": args.max_frames, "iterations": args.iterations, "warmup_steps": args.warmup,
            "timed_steps": args.steps, "seconds_per_step": seconds / args.steps,
            "examples_per_sec": examples_per_sec,
            "forward_gflops_per_sec": examples_per_sec * flops_per_video(model_config) / 1e9,
            "devices": [device.name for device in tf.config.list_logical_devices()],
            "cpus": os.cpu_count()}


def bench_ray(args: argparse.Namespace) -> dict:
    import ray

    from raytrain8m import tracking
    from raytrain8m.data import generate
    from raytrain8m.models import ModelConfig
    from raytrain8m.train import TrainConfig, fit

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
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, args.ray_workers + 2), include_dashboard=False)
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
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--ray-workers", type=int, default=0, help="N > 0: a tiny Ray Train run on N workers")
    args = parser.parse_args()
    if args.ray_workers and args.steps % args.warmup:
        parser.error("--ray-workers: --steps must be a multiple of --warmup (one report window each)")
    logging.basicConfig(level=logging.WARNING)
    figures = bench_ray(args) if args.ray_workers else bench_step(args)
    for key, value in figures.items():
        print(f"{key:>28}: {value}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
