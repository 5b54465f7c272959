"""What a training step waits for at a checkpoint: the snapshot of every variable (weights,
Adam's slots) and its write as a checkpoint directory, as a worker takes them (the model and
optimizer built under a one-worker MultiWorkerMirroredStrategy, `train.loop.snapshot`,
`records.checkpoint.save_checkpoint`). Side by side, each way in a fresh process: the first
checkpoint of a process costs most (its host memory is touched for the first time).
The last line printed is one JSON object.

    python bench/checkpoint_write.py                              # K16-H256, 3862 classes: ~1 min
    python bench/checkpoint_write.py --model K32-H1024 --checkpoints 3

- `tensors`: the snapshot as the loop takes it, tensor reads that share the variables' buffers.
- `numpy`: the snapshot as it was taken before, `variable.numpy()` (a host copy of each),
  which `save_checkpoint` converted back to tensors.
Keys: `<way>_snapshot_s` and `<way>_save_s` (lists, one per checkpoint in the process, the
first first), `checkpoint_mib`, and `first_speedup` (numpy's first snapshot + save ÷ tensors').
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def one_process(way: str, model_name: str, classes: int, checkpoints: int) -> dict:
    """Runs in a fresh process: build, snapshot and save `checkpoints` times, timing each."""
    import shutil
    import tempfile
    import time

    import numpy as np

    from raytrain8m.models.config import ModelConfig
    from raytrain8m.records.checkpoint import save_checkpoint
    from raytrain8m.runtime.lazy import tensorflow as tf
    from raytrain8m.train import loop
    from raytrain8m.train.config import TrainConfig

    config = TrainConfig(model=ModelConfig.from_name(model_name, num_classes=classes))
    with tf.distribute.MultiWorkerMirroredStrategy().scope():  # one worker, as a 1-worker run's
        model, optimizer = loop.make_model_and_optimizer(config)
    result = {"snapshot_s": [], "save_s": []}
    for index in range(checkpoints):
        for variable in model.variables.values():  # a step's update, so no checkpoint repeats the last
            variable.assign_add(tf.fill(variable.shape, tf.constant(1e-3, variable.dtype)))
        start = time.perf_counter()
        if way == "numpy":
            tensors = {name: variable.numpy() for name, variable in sorted(model.variables.items())}
            tensors.update({name: np.asarray(variable.numpy())
                            for name, variable in loop.optimizer_tensors(optimizer).items()})
        else:
            tensors = loop.snapshot(model, optimizer)
        taken = time.perf_counter()
        staging = Path(tempfile.mkdtemp(prefix="raytrain8m-bench-"))
        try:
            path = save_checkpoint(staging / f"checkpoint_{index:08d}", config.model, tensors, index, {})
            saved = time.perf_counter()
            result["checkpoint_mib"] = round(sum(f.stat().st_size for f in path.iterdir()) / 2**20, 1)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        result["snapshot_s"].append(round(taken - start, 3))
        result["save_s"].append(round(saved - taken, 3))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="K16-H256")
    parser.add_argument("--classes", type=int, default=3862)
    parser.add_argument("--checkpoints", type=int, default=3, help="checkpoints written in each process")
    parser.add_argument("--child", choices=("numpy", "tensors"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_process(args.child, args.model, args.classes, args.checkpoints)))
        return 0
    result: dict = {"model": args.model, "classes": args.classes}
    for way in ("numpy", "tensors"):
        done = subprocess.run([sys.executable, __file__, "--child", way, "--model", args.model,
                               "--classes", str(args.classes), "--checkpoints", str(args.checkpoints)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"error: the {way} process failed:\n{done.stderr[-3000:]}", file=sys.stderr)
            return 1
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        result["checkpoint_mib"] = measured.pop("checkpoint_mib")
        result.update({f"{way}_{key}": value for key, value in measured.items()})
    first = {way: result[f"{way}_snapshot_s"][0] + result[f"{way}_save_s"][0] for way in ("numpy", "tensors")}
    result["first_speedup"] = round(first["numpy"] / first["tensors"], 1)
    for key, value in result.items():
        print(f"{key:>18}: {value}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
