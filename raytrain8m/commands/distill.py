"""Distil a student (any registered model) from a teacher ensemble, on Ray Train like jobs/train.py.

Recipes (the same hardware and time as jobs/train.py for the student; the teacher adds its
own forward pass to every step):

    python jobs/distill.py --teacher runs/ensemble --model K16-H256 --distill-lambda 1.0 \\
        --train-data 'data/synth/train*.tfrecord' --validate-data 'data/synth/validate*.tfrecord' \\
        --max-steps 3000 --out runs/distill
    python jobs/distill.py --teacher YHLS --zoo runs/sweep/zoo.json --model K16-H256 ...   # letters

The teacher is an ensemble export (jobs/ensemble.py --out DIR) or zoo letters, exported first
to OUT/RUN_NAME-teacher. It runs online, in each worker beside the student (nothing stored):
the student's targets are λ · the teacher's probabilities + (1 − λ) · the labels, which is
λ · soft-target cross-entropy + (1 − λ) · the label loss (`--distill-lambda`, default 1.0, as
Axon AI found best). Everything else — checkpoints, MLflow run, restarts, `--resume`,
`--ema-decay` — is jobs/train.py's. Prints the result as JSON.
"""
from __future__ import annotations

import sys
from typing import Sequence

from raytrain8m.commands import train as train_job
from raytrain8m.runtime.errors import ConfigError, Raytrain8mError, fail


def main(argv: Sequence[str] | None = None) -> int:
    parser = train_job.build_parser(__doc__)
    parser.add_argument("--zoo", help="zoo.json, when --teacher is zoo letters (e.g. runs/sweep/zoo.json)")
    args = parser.parse_args(argv)
    try:
        if not args.teacher:
            raise ConfigError("--teacher is required: an ensemble export directory, or zoo letters with --zoo")
        from raytrain8m.compose.ensemble import is_letter_spec

        if is_letter_spec(args.teacher):
            if not args.zoo:
                raise ConfigError(f"--teacher {args.teacher!r} is zoo letters; give --zoo too")
            from raytrain8m.compose.ensemble import make_ensemble
            from raytrain8m.train.driver import resolve

            config = resolve(train_job.config_from_args(args))
            teacher_dir = config.run_dir.parent / f"{config.run_name}-teacher"
            make_ensemble(args.teacher, teacher_dir, zoo_path=args.zoo, budget_mib=float("inf"), track=False)
            args.teacher = str(teacher_dir)
    except Raytrain8mError as error:
        return fail(error)
    return train_job.run(args)


if __name__ == "__main__":
    sys.exit(main())
