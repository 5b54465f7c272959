"""What averaging, fp16 and ensembling buy: best single vs averaged, fp32 vs fp16, members vs ensemble.

    python bench/bench_ensemble.py                       # tiny in-process set: synthetic data, 2 members
                                                         # trained here, seeded (about 1 min on 2 CPUs)
    python bench/bench_ensemble.py --runs RUN_DIR1 RUN_DIR2 --validate-data 'data/synth/validate*.tfrecord'

Each RUN_DIR holds one model's checkpoints (every N steps). Prints a table per stage;
the last line is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence



def train_tiny_run(data_dir: Path, run_dir: Path, cluster_size: int, hidden_size: int, seed: int,
                   steps: int = 400, every: int = 50, max_frames: int = 12) -> Path:
    """A tiny Gated NetVLAD trained by training's own step (`train.loop.train_locally`, one process,
    batch 32, Adam 3e-3) on the synthetic train split, a checkpoint every `every` steps
    (`run_dir/checkpoint_<step:08d>`, as a worker writes them)."""
    from raytrain8m.models import ModelConfig
    from raytrain8m.train.config import TrainConfig
    from raytrain8m.train.loop import train_locally

    config = ModelConfig(cluster_size=cluster_size, hidden_size=hidden_size, num_classes=20, iterations=10)
    train_locally(TrainConfig(model=config, train_data=str(data_dir / "train*.tfrecord"), batch_size=32,
                              learning_rate=3e-3, max_steps=steps, checkpoint_every=every, seed=seed,
                              max_frames=max_frames, out=str(run_dir.parent), run_name=run_dir.name))
    return run_dir


def bench(runs: Sequence[Path], validate: str, work: Path) -> dict:
    from raytrain8m.compose.compress import compress_checkpoint
    from raytrain8m.compose.ensemble import member_from_checkpoint, predict_members, tune_weights
    from raytrain8m.compose.export import export_ensemble
    from raytrain8m.select.average import auto_average

    result: dict = {"members": []}
    averaged = []
    for index, run in enumerate(runs):
        started = time.perf_counter()
        summary = auto_average([run], validate, work / f"avg{index}", max_ranges=6, track=False, progress=False)
        report = compress_checkpoint(summary.out, work / f"fp16-{index}", validate, progress=False)
        member = member_from_checkpoint(summary.out)
        averaged.append(member)
        result["members"].append({
            "model": member.name, "run": str(run), "best_single_step": summary.best_single_step,
            "best_single_gap": summary.best_single_gap, "averaged_gap": summary.averaged_gap,
            "averaged_range": list(summary.averaged_range), "fp32_mib": report.fp32_mib,
            "fp16_mib": report.fp16_mib, "gap_fp32": report.gap_fp32, "gap_fp16": report.gap_fp16,
            "seconds": round(time.perf_counter() - started, 2)})
    cached = predict_members(averaged, validate, work / "predictions", progress=False)
    equal = [1 / len(averaged)] * len(averaged)
    tuned, tuned_gap = tune_weights(cached)
    started = time.perf_counter()
    export_ensemble(averaged, tuned, work / "export", validate_gap=tuned_gap)
    result["ensemble"] = {"members": [m.name for m in averaged], "size_fp16_mib": sum(m.fp16_mib for m in averaged),
                          "equal_weights_gap": cached.gap(equal), "tuned_weights": tuned, "tuned_gap": tuned_gap,
                          "best_member_gap": max(cached.gap([1.0], [i]) for i in range(len(averaged))),
                          "export_seconds": round(time.perf_counter() - started, 2),
                          "validate_videos": cached.videos}
    return result


def tables(result: dict) -> str:
    lines = [f"{'model':<10}{'best single':>12}{'averaged':>10}{'range':>12}{'fp32 MiB':>10}{'fp16 MiB':>10}"
             f"{'GAP fp32':>10}{'GAP fp16':>10}"]
    for row in result["members"]:
        lines.append(f"{row['model']:<10}{row['best_single_gap']:>12.4f}{row['averaged_gap']:>10.4f}"
                     f"{'%d..%d' % tuple(row['averaged_range']):>12}{row['fp32_mib']:>10.3f}{row['fp16_mib']:>10.3f}"
                     f"{row['gap_fp32']:>10.4f}{row['gap_fp16']:>10.4f}")
    ensemble = result["ensemble"]
    lines += ["", f"{'':<34}{'GAP':>8}",
              f"{'best member':<34}{ensemble['best_member_gap']:>8.4f}",
              f"{'ensemble, equal weights':<34}{ensemble['equal_weights_gap']:>8.4f}",
              f"{'ensemble, tuned ' + str(ensemble['tuned_weights']):<34}{ensemble['tuned_gap']:>8.4f}",
              f"ensemble size {ensemble['size_fp16_mib']:.3f} MiB fp16, {ensemble['validate_videos']} validate videos"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", help="run directories, one model's checkpoints each")
    parser.add_argument("--validate-data", help="validate glob (needed with --runs)")
    parser.add_argument("--videos", type=int, default=600, help="tiny set: synthetic videos (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=400, help="tiny set: training steps (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # evaluate.predictor retraces per model
    with tempfile.TemporaryDirectory(prefix="bench-ensemble-") as temporary:
        work = Path(temporary)
        started = time.perf_counter()
        if args.runs:
            if not args.validate_data:
                parser.error("--runs needs --validate-data")
            runs, validate = [Path(r) for r in args.runs], args.validate_data
        else:
            import tensorflow as tf

            from raytrain8m.data.synthetic import generate

            # The same figures on every run on one machine: seeded frame sampling, deterministic ops.
            tf.keras.utils.set_random_seed(0)
            tf.config.experimental.enable_op_determinism()
            generate(str(work / "data"), videos=args.videos, classes=20, max_frames=20, shards=2, seed=0,
                     progress=False)
            runs = [train_tiny_run(work / "data", work / f"run{i}", k, h, seed=i + 1, steps=args.steps,
                                   max_frames=20)
                    for i, (k, h) in enumerate(((4, 16), (8, 24)))]
            validate = str(work / "data" / "validate*.tfrecord")
        result = bench(runs, validate, work)
        result["seconds"] = round(time.perf_counter() - started, 1)
    print(tables(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
