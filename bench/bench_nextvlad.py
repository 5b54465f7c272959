"""NeXtVLAD vs Gated NetVLAD at equal size: validate GAP, fp16 MiB and GAP per MiB, small scale.

    python bench/bench_nextvlad.py                     # synthetic data (topics only in the frame
                                                       # clusters), K32-H64 vs the NeXtVLAD nearest in
                                                       # size, 2 seeds each (a few minutes on 2 CPUs)
    python bench/bench_nextvlad.py --gated K16-H64 --nextvlad NX-K8-H64 --steps 400 --seeds 3

Both train with the same step function (`train.loop.train_locally`: Adam, clip, the same batches
and learning rate), one process, no Ray. The NeXtVLAD is the one whose fp16 size is nearest the
Gated NetVLAD's unless given. Prints a table; the last line is one JSON object.
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

log = logging.getLogger("bench_nextvlad")


def nearest_nextvlad(target_mib: float, num_classes: int, iterations: int) -> str:
    """The NX-K<k>-H<h> (reference G, λ, r) whose fp16 size is nearest `target_mib`."""
    from raytrain8m.models import ModelConfig, size_mib

    names = [f"NX-K{k}-H{h}" for k in (2, 4, 8, 16, 32, 64) for h in (16, 24, 32, 48, 64, 96, 128, 256, 512)]
    return min(names, key=lambda name: abs(size_mib(ModelConfig.from_name(
        name, num_classes=num_classes, iterations=iterations), fp16=True) - target_mib))


def train_and_score(name: str, data: Path, args: argparse.Namespace, seed: int) -> dict:
    import tensorflow as tf

    from raytrain8m.models import ModelConfig, num_parameters, size_mib
    from raytrain8m.records.evaluate import evaluate, predictor
    from raytrain8m.train.config import TrainConfig
    from raytrain8m.train.loop import train_locally

    model = ModelConfig.from_name(name, num_classes=args.classes, iterations=args.frames)
    config = TrainConfig(model=model, train_data=str(data / "train*.tfrecord"),
                         validate_data=str(data / "validate*.tfrecord"), batch_size=args.batch_size,
                         learning_rate=args.lr, max_steps=args.steps, num_workers=1, max_frames=args.frames,
                         seed=seed)
    tf.random.set_seed(seed)
    started = time.perf_counter()
    trained, losses = train_locally(config)
    gap = float(evaluate(predictor(trained), config.validate_data, args.classes, progress=False)["gap"])
    log.warning("%s seed %d: GAP %.4f after %d steps (%.0f s)", name, seed, gap, args.steps,
                time.perf_counter() - started)
    return {"model": name, "family": model.family, "seed": seed, "gap": gap, "params": num_parameters(model),
            "fp16_mib": size_mib(model, fp16=True), "final_loss": losses[-1],
            "train_s": time.perf_counter() - started}


def summarise(rows: Sequence[dict]) -> dict:
    gaps = [row["gap"] for row in rows]
    mib = rows[0]["fp16_mib"]
    mean = sum(gaps) / len(gaps)
    return {"model": rows[0]["model"], "family": rows[0]["family"], "params": rows[0]["params"],
            "fp16_mib": round(mib, 4), "gap": round(mean, 4), "gaps": [round(g, 4) for g in gaps],
            "gap_per_mib": round(mean / mib, 4), "train_s": round(sum(r["train_s"] for r in rows) / len(rows), 1)}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gated", default="K32-H64", help="the Gated NetVLAD (default: %(default)s)")
    parser.add_argument("--nextvlad", help="the NeXtVLAD (default: the one nearest the Gated NetVLAD's fp16 size)")
    parser.add_argument("--videos", type=int, default=400)
    parser.add_argument("--classes", type=int, default=40)
    parser.add_argument("--frames", type=int, default=20, help="max frames a video (and iterations)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--data", help="an existing synthetic directory (default: generated in a temp dir)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from raytrain8m.data.synthetic import generate
    from raytrain8m.models import ModelConfig, size_mib

    gated_mib = size_mib(ModelConfig.from_name(args.gated, num_classes=args.classes, iterations=args.frames), fp16=True)
    nextvlad = args.nextvlad or nearest_nextvlad(gated_mib, args.classes, args.frames)
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(args.data) if args.data else Path(scratch) / "data"
        if not args.data:
            # Topics only in the frame clusters (no offset of the frame mean), as in the train test.
            generate(str(data), videos=args.videos, classes=args.classes, max_frames=args.frames, shards=2,
                     seed=0, topic_offset=0.0, progress=False)
        results = [summarise([train_and_score(name, data, args, seed) for seed in range(args.seeds)])
                   for name in (args.gated, nextvlad)]
    print(f"{'model':<14} {'family':<14} {'params':>9} {'fp16 MiB':>9} {'GAP':>7} {'GAP/MiB':>8}  per seed")
    for row in results:
        print(f"{row['model']:<14} {row['family']:<14} {row['params']:>9,} {row['fp16_mib']:>9.3f} {row['gap']:>7.4f} "
              f"{row['gap_per_mib']:>8.3f}  {row['gaps']}")
    gated, nx = results
    print(json.dumps({"gated_netvlad": gated, "nextvlad": nx, "videos": args.videos, "classes": args.classes,
                      "frames": args.frames, "steps": args.steps, "batch_size": args.batch_size, "seeds": args.seeds,
                      "gap_difference": round(nx["gap"] - gated["gap"], 4),
                      "gap_per_mib_ratio": round(nx["gap_per_mib"] / gated["gap_per_mib"], 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
