r"""Train a grid of models (Gated NetVLAD K×H, NeXtVLAD NX-…) on Ray Tune, then build the zoo (Table 1).

Recipes:

    # the plan only: per config fp32/fp16 MiB, GiB per worker, GPU type and batch size
    python jobs/sweep.py --grid paper --classes 3862 --dry-run --gpus 1080Ti,1060,T4,L4
    # a tiny local sweep (2 models, 20 steps; 2 CPU cores: ~3 min), prints the zoo table
    python jobs/synth.py --out data/synth --smoke
    python jobs/sweep.py --smoke --train-data 'data/synth/train*.tfrecord' \
        --validate-data 'data/synth/validate*.tfrecord' --out runs/sweep
    # the paper's 28 models on a cluster of labelled GPU nodes (ray up cluster/gcp.yaml):
    ray job submit --working-dir . -- python jobs/sweep.py \
        --grid paper --classes 3862 \
        --train-data 'gs://BUCKET/train*.tfrecord' --validate-data 'gs://BUCKET/validate*.tfrecord' \
        --out /shared/sweep --max-steps 200000 --checkpoint-every 5000
        # 1080Ti/T4/L4: 2-3 days a model (the paper: 200k steps on one 1080Ti); expect the
        # zoo's best single-checkpoint GAP around 0.86-0.87 on validate (paper, Table 1)
    # `make sweep`: 4 models × 120 steps on data/synth, 2 CPU cores: ~5 min
    # where each model stands (checkpoint step, done, GAP), while it runs or after it stopped
    python jobs/sweep.py --out runs/sweep --status
    # after the driver died: finish only the unfinished trials
    python jobs/sweep.py --out runs/sweep --resume

Each trial is a Ray Train run on one GPU type (Ray node label `gpu-type`); its batch size is
the largest of 160, 80, 40, 20 that fits that type's memory. Configs that fit no GPU type of
the cluster are refused before anything starts. MLflow: a parent run `sweep <out>` with one
child run per model (GAP, sizes, GPU type, batch size) and the zoo's table and Pareto plot.
The paper's split: --holdout auto (default) holds out round(60/3844 · files) validate files
(at least 2; the paper's 60 of 3844), trains on the rest plus train, makes the zoo's choices on
one half of the held-out files and reports GAP on the other (sweep.json and split.json record
it). The zoo's evaluations run as Ray tasks, many at once.
--out must be a filesystem every node sees (one machine, or NFS on a cluster): trials write
their checkpoints there and the zoo is built from them.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from raytrain8m.models.config import DEFAULT_BUDGET_MIB
from raytrain8m.runtime.cli import LOG_NAMED, Parser, add_skip_corrupt, add_verbose_flag, console
from raytrain8m.runtime.errors import Raytrain8mError, fail
from raytrain8m.train.config import MIXED_PRECISIONS, TrainConfig

SMOKE = {"grid": "K4-H16,K8-H16", "classes": 20, "max_steps": 20, "checkpoint_every": 5,
         "batch_sizes": "16,8"}  # --smoke: flags of this parser, for those not given
SMOKE_TRAIN = {"eval_every": 0, "eval_batches": 2, "log_every": 5, "batch_size": 16}  # TrainConfig fields


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = Parser(description=__doc__)
    grid = parser.add_argument_group("the grid (names, or cluster × hidden sizes, or a sweep file)")
    grid.add_argument("--grid", default="", help="model names of either family, e.g. "
                      "K24-H1440,K32-H1024,NX-K112-H2048-R16; `paper`: the paper's 28")
    grid.add_argument("--cluster-sizes", default="", help="e.g. 8,16,32")
    grid.add_argument("--hidden-sizes", default="", help="e.g. 256,512,1024")
    grid.add_argument("--sweep-file", help="YAML/JSON: grid, cluster_sizes, hidden_sizes, classes, "
                                          "workers_per_trial, train: {TrainConfig settings}")
    grid.add_argument("--classes", type=int, help="number of classes (3862 for YouTube-8M 2018)")
    train = parser.add_argument_group("training (defaults: TrainConfig's, or the sweep file's)")
    train.add_argument("--train-data", help="train split glob or URI")
    train.add_argument("--validate-data", help="validate split glob or URI (also scores the zoo)")
    train.add_argument("--holdout", help="validate files held out of training for every later choice: auto "
                                         "(default: the paper's 60 of 3844, scaled: round(60/3844 * files), "
                                         "at least 2), N, or 0 (train on train files, score on all validate)")
    train.add_argument("--max-steps", type=int)
    train.add_argument("--checkpoint-every", type=int)
    train.add_argument("--lr", dest="learning_rate", type=float,
                       help="base learning rate (TrainConfig's default: the paper's 1e-4)")
    train.add_argument("--workers-per-trial", type=int, help="data-parallel workers per model (default 1)")
    train.add_argument("--mixed-precision", choices=MIXED_PRECISIONS,
                       help="the models' matmuls in bf16 or fp16 (fp16 with loss scaling), variables float32: "
                            "for GPUs with tensor cores (default: TrainConfig's, off)")
    add_skip_corrupt(train)
    train.add_argument("--batch-sizes", default="", help="per-worker batch sizes to try on a GPU, largest "
                                                        "first (default: 160,80,40,20, the paper's)")
    run = parser.add_argument_group("the sweep")
    run.add_argument("--out", default="runs/sweep", help="sweep directory (default: %(default)s)")
    run.add_argument("--max-concurrent", type=int, help="trials at once (default: what the cluster holds)")
    run.add_argument("--max-failures", type=int, default=2, help="retries of a failed trial (default: %(default)s)")
    run.add_argument("--resume", action="store_true",
                     help="finish the sweep in --out: run only the trials that have no trial.json yet")
    run.add_argument("--status", action="store_true",
                     help="print where each model of the sweep in --out stands (running or not) and exit")
    run.add_argument("--dry-run", action="store_true", help="print the placement plan and exit")
    run.add_argument("--gpus", default="", help="plan for these GPU types instead of the cluster's "
                                                "(e.g. 1080Ti=2,1060,T4,L4); with --dry-run")
    run.add_argument("--zoo-interval", type=int, default=1, help="score every N-th checkpoint for the zoo")
    distill = parser.add_argument_group("distill stage (after the zoo)")
    distill.add_argument("--distill", metavar="STUDENTS", default="",
                         help="models (grid names, not in the sweep) to train from the zoo's best ensemble under "
                              "--teacher-budget, in OUT/students; they join the zoo")
    distill.add_argument("--teacher-budget", type=float, default=DEFAULT_BUDGET_MIB,
                         help="MiB: the teacher ensemble's size budget (default: %(default)g)")
    distill.add_argument("--distill-lambda", type=float, default=TrainConfig().distill_lambda,
                         help="students' targets: λ · teacher + (1 − λ) · labels (default: %(default)g)")
    run.add_argument("--smoke", action="store_true",
                     help=f"tiny settings for anything not given: {json.dumps({**SMOKE, **SMOKE_TRAIN})}")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            if not vars(args)[key] and not (key == "grid" and (args.cluster_sizes or args.sweep_file)):
                setattr(args, key, value)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console(args.verbose, log_format=LOG_NAMED)
    from raytrain8m.pipeline.stages import check_students, distill_stage, zoo_of_sweep
    from raytrain8m.select.scoring import Timing
    from raytrain8m.sweep import placement
    from raytrain8m.sweep import records as sweep_records
    from raytrain8m.sweep import tune as sweep

    try:
        if args.status:
            print(sweep_records.status_table(sweep_records.sweep_status(args.out)))
            return 0
        if args.resume:
            result = sweep.resume_sweep(args.out)
        else:
            spec = sweep.sweep_spec(
                args.grid, args.cluster_sizes, args.hidden_sizes, args.classes, args.workers_per_trial,
                args.sweep_file, train_data=args.train_data, validate_data=args.validate_data,
                max_steps=args.max_steps, checkpoint_every=args.checkpoint_every, holdout=args.holdout,
                skip_corrupt=args.skip_corrupt or None, learning_rate=args.learning_rate,
                mixed_precision=args.mixed_precision, **(SMOKE_TRAIN if args.smoke else {}))
            if args.batch_sizes:
                spec = spec.replace(batch_sizes=tuple(placement.parse_ints(args.batch_sizes, "batch sizes")))
            if args.distill:  # before training anything
                check_students(placement.parse_grid(args.distill), [model.name for model in spec.models])
            if args.dry_run:
                inventory = placement.parse_inventory(args.gpus) if args.gpus else None
                print(placement.plan_table(sweep.plan_sweep(spec, inventory)))
                return 0
            result = sweep.run_sweep(spec, args.out, args.max_concurrent, args.max_failures)
        failed = [trial for trial in result.trials if trial.error]
        for trial in failed:
            print(f"error: trial {trial.model} failed: {trial.error.splitlines()[0]}", file=sys.stderr)
        zoo = zoo_of_sweep(result, interval=args.zoo_interval)  # the trials that completed
        if args.distill:
            taught, zoo = distill_stage(result, zoo, args.distill, args.teacher_budget, args.distill_lambda,
                                        args.max_concurrent, args.max_failures)
            for trial in taught.trials:
                if trial.error:
                    failed.append(trial)
                    print(f"error: student {trial.model} failed: {trial.error.splitlines()[0]}", file=sys.stderr)
    except Raytrain8mError as error:
        return fail(error)
    print(zoo.table())
    print(f"\n{len(result.completed)}/{len(result.trials)} trials in {result.wall_s:.0f} s; "
          f"zoo: {zoo.path}")
    print(f"zoo scoring: {Timing.from_dict(zoo.timing or {}).describe()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
