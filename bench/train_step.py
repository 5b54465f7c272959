"""Training step speed: the bare compiled step on random inputs, its MFU, and what a 1-worker Ray
Train run (jobs/train.py's path: `fit` on official-format shards) keeps of it. Last line: one JSON.

    python bench/train_step.py --smoke                                  # tiny model, ~1-2 min on 2 cores
    python bench/train_step.py --model K16-H256 --classes 3862 --batch-size 80 --max-frames 300
    python bench/train_step.py --model K32-H1024 --classes 3862 --batch-size 80 --no-ray   # MFU only
    python bench/train_step.py --smoke --jit-compile                    # the step with XLA
    python bench/train_step.py --smoke --no-ray --mixed-precision bf16  # the model's matmuls in bfloat16

- `examples_per_s`: the bare step (the trainer's own `make_train_step` under a one-worker
  MultiWorkerMirroredStrategy, random uint8 inputs already in memory), after `--warmup` steps.
- `mfu`: 3 × forward FLOPs a video (`flops_per_video`, the model's own count) × examples/s ÷
  this process's fp32 matmul rate (4096², the best of a few), the same machine, the same moment.
- `mixed_precision` (`--mixed-precision off|bf16|fp16`) and `matmul_dtype`: the dtypes the
  traced step's MatMul/BatchMatMul ops run in (read from its graph, forward and backward).
- `ray_examples_per_s` and `ray_overhead_ratio`: a 1-worker `fit` on synthetic shards of the same
  model, batch and frames (one epoch, several times the object store, so Ray Data reads as the
  steps consume); steady examples/s from its MLflow `examples_per_sec` windows after the first
  (the warm-up), ÷ the bare step's.
  The ratio is against the mean of the bare step timed before and after the run
  (`bare_examples_per_s_before_after`): this machine's speed drifts by ~10% over minutes.
- `ray_cpu_cores`: the cores each kind of process used during the run's timed windows (the
  training worker, Ray Data's read tasks and coordinator, Ray's other processes, `idle`).
- `spilled_mib`: what the object store spilled to disk during the run (Ray's memory summary);
  anything above 0 means blocks outgrew the store and the run paid to write and read them back.
- `startup_s`: the run's wall time (from before `ray.init`) minus its steps at the steady rate.
- `ray_input_wait_fraction`: the share of the timed windows the Ray run's step spent waiting for
  its next batch (MLflow's `input_wait_fraction`, which every run logs): 0 when reading keeps
  ahead of the step, whatever else slows it.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def matmul_flops_per_s(size: int = 4096, repeats: int = 3) -> float:
    import tensorflow as tf

    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    matmul = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    float(matmul(a, b))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        float(matmul(a, b))
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def bare_step(config, args: argparse.Namespace) -> tuple[Callable[[], float], str]:
    """The trainer's compiled step on random quantized inputs, warmed up: a function that times
    `--steps` of it (examples/s), and the dtype(s) its matmuls ran in."""
    import numpy as np
    import tensorflow as tf

    from raytrain8m.train.loop import make_model_and_optimizer, make_train_step
    from raytrain8m.train.mixed_precision import matmul_dtypes

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model, optimizer = make_model_and_optimizer(config.replace(seed=0))
    step = make_train_step(model, optimizer, strategy, config)
    rng = np.random.default_rng(0)
    inputs = (tf.constant(rng.integers(0, 256, (config.batch_size, config.max_frames, 1152), dtype=np.uint8)),
              tf.constant(rng.integers(config.max_frames // 2, config.max_frames + 1, config.batch_size)
                          .astype(np.int32)),
              tf.constant((rng.random((config.batch_size, config.model.num_classes)) < 3 / config.model.num_classes)
                          .astype(np.uint8)))
    for _ in range(args.warmup):
        float(step(*inputs))

    def rate() -> float:
        start = time.perf_counter()
        losses = [step(*inputs) for _ in range(args.steps)]
        float(losses[-1])
        return args.steps * config.batch_size / (time.perf_counter() - start)

    return rate, ",".join(matmul_dtypes(step.get_concrete_function()))


class CpuSampler:
    """Every process's CPU seconds, sampled each second in a thread: what each kind of process
    used (in cores) between two moments, to show where the CPUs went during the Ray run's steps."""

    KINDS = (("RayTrainWorker", "training worker"), ("ReadYouTube8M", "read tasks"),
             ("SplitCoordinator", "Ray Data coordinator"), ("ray", "Ray's other processes"))

    def __init__(self):
        import threading

        self.samples: list[tuple[float, dict[int, tuple[float, str]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(1.0 if self.samples else 0):
            sample = {}
            for process in psutil.process_iter(["cmdline", "name"]):
                try:
                    times = process.cpu_times()
                    name = " ".join(process.info["cmdline"] or [process.info["name"] or ""])
                    sample[process.pid] = (times.user + times.system, name)
                except Exception:  # gone, or not ours to read
                    continue
            self.samples.append((time.time(), sample))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def cores(self, start: float, end: float) -> dict[str, float]:
        """Cores used per kind of process between the first sample after `start` and the last
        before `end` (epoch seconds); `idle` is what was left of the machine's CPUs."""
        inside = [(when, sample) for when, sample in self.samples if start <= when <= end]
        if len(inside) < 2:
            return {}
        (first_time, first), (last_time, last) = inside[0], inside[-1]
        seconds = last_time - first_time
        used: dict[str, float] = {}
        for pid, (cpu, name) in last.items():
            kind = "this bench (the driver)" if pid == os.getpid() else next(
                (label for key, label in self.KINDS if key in name), "other processes")
            used[kind] = used.get(kind, 0.0) + (cpu - first.get(pid, (0.0, ""))[0]) / seconds
        used["idle"] = (os.cpu_count() or 1) - sum(used.values())
        return {kind: round(value, 3) for kind, value in sorted(used.items(), key=lambda item: -item[1])}


def ray_run(config, args: argparse.Namespace, tmp: str) -> dict:
    """A 1-worker `fit` on synthetic shards: steady examples/s and start-up seconds."""
    import ray

    from raytrain8m.data import generate
    from raytrain8m.records import tracking
    from raytrain8m.runtime import localray
    from raytrain8m.train.driver import fit

    data = Path(tmp) / "data"
    steps = args.warmup + args.steps
    # One epoch holds the whole run, as on the real set (an epoch of 3,844 files): the train
    # split holds the run's batches, the shuffle buffer and a spare batch.
    held_out = {"validate_fraction": 0.2, "test_fraction": 0.1}
    needed = math.ceil(((steps + 1) * config.batch_size + config.shuffle_buffer) / (1 - sum(held_out.values())))
    generate(str(data), videos=max(args.videos, needed), classes=config.model.num_classes,
             max_frames=config.max_frames, shards=8, seed=0, progress=False, **held_out)
    os.sync()  # the shards on disk, as a real set is: no write-back competing with the run
    config = config.replace(train_data=str(data / "train*.tfrecord"), validate_data=str(data / "validate*.tfrecord"),
                            max_steps=steps, checkpoint_every=steps, eval_every=0, eval_batches=1,
                            log_every=args.warmup, max_failures=0, out=str(Path(tmp) / "out"), run_name="bench",
                            experiment="bench", tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    sampler = CpuSampler()
    start = time.perf_counter()
    # A store far smaller than the run's data (`--object-store-mib`) keeps Ray Data reading in
    # step with the steps, as the real 1.4 TB set does on any node. With `--object-store-mib 0`
    # (Ray's default, 30% of memory) the store holds this synthetic epoch, Ray Data reads most of
    # it during the warm-up, and the timed windows pay for little reading: a flattering figure.
    # Ray as every command starts it (`localray.start`: its local settings for Train, quiet).
    localray.start(num_cpus=max(os.cpu_count() or 1, 2) + 1,
                   object_store_memory=args.object_store_mib * 2**20 if args.object_store_mib else None)
    try:
        result = fit(config)
        wall = time.perf_counter() - start
        client = tracking.client(config.tracking_uri)
        history = client.get_metric_history(result.mlflow_run_id, "examples_per_sec")
        waits = client.get_metric_history(result.mlflow_run_id, "input_wait_fraction")
        spilled = spilled_mib()
    finally:
        ray.shutdown()
        sampler.stop()
    history = sorted(history, key=lambda m: m.step)
    timed = [metric.value for metric in history if metric.step > args.warmup]
    rate = len(timed) / sum(1 / value for value in timed)  # windows of equal steps: harmonic mean
    # The timed windows' ends as logged, but the last: it is logged after the final evaluation.
    steady = [metric.timestamp / 1000 for metric in history if metric.step >= args.warmup][:-1]
    waited = [metric.value for metric in waits if metric.step > args.warmup]
    return {"ray_examples_per_s": rate, "startup_s": wall - steps * config.batch_size / rate,
            "ray_input_wait_fraction": sum(waited) / len(waited) if waited else None,
            "ray_wall_s": wall, "ray_steps": steps, "ray_cpu_cores": sampler.cores(steady[0], steady[-1]),
            "spilled_mib": spilled}


def spilled_mib() -> int:
    """MiB the object store spilled to disk so far in this Ray session (Ray's memory summary)."""
    from ray._private.internal_api import memory_summary

    found = re.search(r"Spilled (\d+) MiB", memory_summary(stats_only=True))
    return int(found.group(1)) if found else 0


def main() -> int:
    from raytrain8m.train.config import MIXED_PRECISIONS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="K16-H256")
    parser.add_argument("--classes", type=int, default=3862)
    parser.add_argument("--batch-size", type=int, default=80)
    parser.add_argument("--max-frames", type=int, default=300)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--steps", type=int, default=64, help="timed steps (the Ray run: a multiple of --warmup)")
    parser.add_argument("--videos", type=int, default=0,
                        help="synthetic videos for the Ray run (default: enough that the run is one epoch)")
    parser.add_argument("--object-store-mib", type=int, default=1024,
                        help="the Ray run's object store in MiB, far below its data so reading runs in step "
                             "(default: %(default)s; 0 = Ray's own, 30%% of memory)")
    parser.add_argument("--jit-compile", action="store_true", help="XLA-compile the step's forward and backward")
    parser.add_argument("--mixed-precision", choices=MIXED_PRECISIONS, default="off",
                        help="the model's matmuls in bfloat16 or float16 (default: %(default)s)")
    parser.add_argument("--no-ray", action="store_true", help="the bare step and MFU only")
    parser.add_argument("--smoke", action="store_true", help="K4-H16, 20 classes, 30 frames, batch 16")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.classes, args.max_frames, args.iterations, args.batch_size = "K4-H16", 20, 30, 30, 16
        args.warmup, args.steps = 5, 40
    if args.steps % args.warmup:
        parser.error("--steps must be a multiple of --warmup (the Ray run reports one window each)")
    logging.basicConfig(level=logging.WARNING)
    import numpy as np
    import tensorflow as tf

    from raytrain8m.models import ModelConfig, flops_per_video
    from raytrain8m.train.config import TrainConfig

    model = ModelConfig.from_name(args.model, num_classes=args.classes, iterations=args.iterations)
    changes = {"jit_compile": True} if args.jit_compile else {}
    config = TrainConfig(model=model, batch_size=args.batch_size, max_frames=args.max_frames,
                         mixed_precision=args.mixed_precision, **changes)
    peak = matmul_flops_per_s()
    time_bare_step, matmul_dtype = bare_step(config, args)
    examples_per_s = time_bare_step()
    figures = {"model": model.name, "classes": args.classes, "batch_size": args.batch_size,
               "max_frames": args.max_frames, "jit_compile": args.jit_compile,
               "mixed_precision": args.mixed_precision, "matmul_dtype": matmul_dtype,
               "examples_per_s": examples_per_s, "matmul_gflops_per_s": peak / 1e9,
               "mfu": 3 * flops_per_video(model) * examples_per_s / peak}
    if not args.no_ray:
        with tempfile.TemporaryDirectory() as tmp:
            figures.update(ray_run(config, args, tmp))
        # The machine's speed drifts by ~10% over minutes: the bare step again after the run,
        # and the ratio against the mean of the two.
        figures["bare_examples_per_s_before_after"] = [examples_per_s, time_bare_step()]
        figures["ray_overhead_ratio"] = figures["ray_examples_per_s"] / np.mean(
            figures["bare_examples_per_s_before_after"])
    figures.update(cpus=os.cpu_count(), load_average_1m=os.getloadavg()[0],
                   devices=[device.name for device in tf.config.list_logical_devices()])
    for key, value in figures.items():
        print(f"{key:>22}: {value:.3f}" if isinstance(value, float) else f"{key:>22}: {value}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
