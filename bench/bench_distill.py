"""What distillation buys: a student trained on a teacher ensemble's predictions vs on labels alone.

    python bench/bench_distill.py    # synthetic data (420 train, 720 validate videos); a 2-member teacher
                                     # (K8-H24 + K16-H48) and K4-H16 students trained here, seeded (~4 min, 2 CPUs)

Students use the project's own train step (`train.loop.train_locally`: one process, no Ray),
the same steps, batch and learning rate; only the targets differ (`--distill-lambda`).
Prints a table; the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="student steps (default: %(default)s)")
    parser.add_argument("--lambdas", default="0,0.5,1", help="distill_lambda values (0 = labels only)")
    args = parser.parse_args(argv)

    from raytrain8m.compose.ensemble import make_ensemble
    from raytrain8m.data.synthetic import generate
    from raytrain8m.models import ModelConfig
    from raytrain8m.records.evaluate import evaluate, predictor
    from raytrain8m.train.config import TrainConfig
    from raytrain8m.train.loop import train_locally

    from bench_ensemble import train_tiny_run

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-distill-") as work:
        work = Path(work)
        data = work / "data"
        generate(str(data), videos=1200, classes=20, max_frames=12, shards=1, seed=0, validate_fraction=0.6,
                 test_fraction=0.05, progress=False)
        validate = str(data / "validate*.tfrecord")
        members = [train_tiny_run(data, work / f"K{k}-H{h}", k, h, seed, steps=300, every=300) / "checkpoint_00000300"
                   for k, h, seed in ((8, 24, 2), (16, 48, 3))]
        teacher = make_ensemble(",".join(map(str, members)), work / "teacher", validate_data=validate,
                                progress=False, track=False)
        student = ModelConfig(cluster_size=4, hidden_size=16, num_classes=20, iterations=10)
        for value in (float(v) for v in args.lambdas.split(",")):
            config = TrainConfig(model=student, train_data=str(data / "train*.tfrecord"), batch_size=32,
                                 learning_rate=3e-3, max_steps=args.steps, max_frames=12, seed=1,
                                 teacher=str(work / "teacher") if value > 0 else "", distill_lambda=value)
            model, _ = train_locally(config)
            gap = float(evaluate(predictor(model), validate, 20, progress=False)["gap"])
            rows.append({"distill_lambda": value, "steps": args.steps, "student": student.name, "gap": gap})
    result = {"teacher_gap": teacher.validate_gap, "teacher_member_gaps": [m.gap for m in teacher.members],
              "students": rows}
    print(f"teacher (K8-H24 + K16-H48, equal weights): validate GAP {teacher.validate_gap:.4f}")
    print(f"{'student':<9}{'lambda':>8}{'steps':>7}{'GAP':>9}")
    for row in rows:
        print(f"{row['student']:<9}{row['distill_lambda']:>8g}{row['steps']:>7}{row['gap']:>9.4f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
