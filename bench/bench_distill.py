"""What distillation buys: a student trained on a teacher ensemble's predictions vs on labels alone.

    python bench/bench_distill.py                    # clean labels: distillation loses (~1 min, 2 CPUs)
    python bench/bench_distill.py --setting noisy    # train labels noisy (0.3), 1000 student steps:
                                                     # distillation wins (3-6 min on 2 shared CPUs)
    python bench/bench_distill.py --setting noisy --seed 1     # another data set, teacher and students

Synthetic data (420 train, 720 validate videos, 20 classes; `--seed` picks the data, and the
teacher's and students' seeds are offset by it); a 2-member teacher (K8-H24 + K16-H48, equal
weights, `--teacher-steps` steps each of the same train step on the train split); K4-H16 students trained with the
project's own train step (`train.loop.train_locally`: one process, no Ray), the same steps, batch
(32), learning rate (Adam 3e-3) and TensorFlow seed (the same frame sampling); only the targets
differ (`--lambdas`: 0 is labels only). Validate is the holdout and its labels are always clean.

Settings (explicit `--label-noise` / `--steps` override them):
    clean   labels as generated, 300 student steps (the first measurement)
    noisy   `--label-noise 0.3`: each train label is replaced by a uniformly drawn class with
            probability 0.3 (`generate(label_noise=...)`, validate untouched), 1000 student
            steps: a labels-only student fits the wrong labels, the teacher's probabilities
            on the same videos average them out
Prints a table; the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Sequence

SETTINGS = {"clean": {"label_noise": 0.0, "steps": 300}, "noisy": {"label_noise": 0.3, "steps": 1000}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="clean",
                        help="label noise and student steps together (default: %(default)s)")
    parser.add_argument("--steps", type=int, help="student steps (default: the setting's)")
    parser.add_argument("--lambdas", default="0,0.5,0.7,1", help="distill_lambda values (0 = labels only)")
    parser.add_argument("--label-noise", type=float,
                        help="share of train labels replaced by a random class; validate stays clean "
                             "(default: the setting's)")
    parser.add_argument("--teacher-steps", type=int, default=300, help="each teacher member's steps")
    parser.add_argument("--seed", type=int, default=0,
                        help="data seed; teacher and student seeds are offset by it (default: %(default)s)")
    args = parser.parse_args(argv)
    for key, value in SETTINGS[args.setting].items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    import tensorflow as tf

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
        generate(str(data), videos=1200, classes=20, max_frames=12, shards=1, seed=args.seed, validate_fraction=0.6,
                 test_fraction=0.05, label_noise=args.label_noise, progress=False)
        validate = str(data / "validate*.tfrecord")
        steps, members = args.teacher_steps, []
        for k, h, seed in ((8, 24, 2), (16, 48, 3)):
            tf.random.set_seed(seed + args.seed)  # training's frame sampling draws from TF's global seed
            members.append(train_tiny_run(data, work / f"K{k}-H{h}", k, h, seed + args.seed, steps=steps,
                                          every=steps) / f"checkpoint_{steps:08d}")
        teacher = make_ensemble(",".join(map(str, members)), work / "teacher", validate_data=validate,
                                progress=False, track=False)
        student = ModelConfig(cluster_size=4, hidden_size=16, num_classes=20, iterations=10)
        for value in (float(v) for v in args.lambdas.split(",")):
            config = TrainConfig(model=student, train_data=str(data / "train*.tfrecord"), batch_size=32,
                                 learning_rate=3e-3, max_steps=args.steps, max_frames=12, seed=1 + args.seed,
                                 teacher=str(work / "teacher") if value > 0 else "", distill_lambda=value)
            tf.random.set_seed(config.seed)  # every student samples the same frames: only the targets differ
            model, _ = train_locally(config)
            gap = float(evaluate(predictor(model), validate, 20, progress=False)["gap"])
            rows.append({"distill_lambda": value, "steps": args.steps, "student": student.name, "gap": gap})
    result = {"teacher_gap": teacher.validate_gap, "teacher_member_gaps": [m.gap for m in teacher.members],
              "students": rows, "setting": args.setting, "label_noise": args.label_noise, "seed": args.seed,
              "teacher_steps": args.teacher_steps}
    print(f"label noise {args.label_noise:g} (train only), seed {args.seed}; teacher (K8-H24 + K16-H48, equal "
          f"weights, {args.teacher_steps} steps each): validate GAP {teacher.validate_gap:.4f}")
    print(f"{'student':<9}{'lambda':>8}{'steps':>7}{'GAP':>9}")
    for row in rows:
        print(f"{row['student']:<9}{row['distill_lambda']:>8g}{row['steps']:>7}{row['gap']:>9.4f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
