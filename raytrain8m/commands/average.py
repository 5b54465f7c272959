"""Average a model's checkpoints (paper 2.3): one range, an explicit list, or `--auto` search.

Recipes (CPU is enough; seconds per checkpoint of a K16-H256 on the synthetic data):

    # explicit list, or every checkpoint of a run within a step range
    python jobs/average.py runs/train/K16-H256/checkpoint_00020000 runs/train/K16-H256/checkpoint_00025000 --out runs/avg/K16-H256
    python jobs/average.py runs/train/K16-H256 --start-step 20000 --end-step 40000 --out runs/avg/K16-H256
    # the paper's search: singles at intervals on validate, then ranges around the best; keeps the best
    python jobs/average.py runs/train/K16-H256 --auto --validate-data 'data/synth/validate*.tfrecord' --out runs/avg/K16-H256

Batch-norm moving statistics are averaged; step counters and optimizer slots are not.
Checkpoints of different models are refused. `--auto` logs every evaluation to MLflow and
prints a JSON summary (best single GAP, averaged GAP, range); the paper measured +0.0039 GAP
on average over the best single checkpoint (tiny synthetic models: +0.003..0.007).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from raytrain8m.runtime.cli import LOG_NAMED, Parser, add_evaluation_flags, add_verbose_flag, console
from raytrain8m.runtime.errors import ConfigError, Raytrain8mError, fail


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = Parser(description=__doc__)
    parser.add_argument("sources", nargs="+", help="checkpoint directories, or run directories holding them")
    parser.add_argument("--out", required=True, help="the averaged checkpoint directory to write")
    parser.add_argument("--start-step", type=int, help="first step to include (default: the first)")
    parser.add_argument("--end-step", type=int, help="last step to include (default: the last)")
    parser.add_argument("--auto", action="store_true",
                        help="evaluate singles and candidate ranges on --validate-data, keep the best average")
    parser.add_argument("--validate-data", help="validate split glob (needed by --auto)")
    parser.add_argument("--interval", type=int, default=1,
                        help="--auto evaluates every N-th single checkpoint (default: %(default)s)")
    parser.add_argument("--max-ranges", type=int, default=8, help="--auto: candidate ranges to try (default: %(default)s)")
    add_evaluation_flags(parser)
    add_verbose_flag(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console(args.verbose, tensorflow=True, log_format=LOG_NAMED)
    from raytrain8m.select import average

    try:
        if args.auto:
            if not args.validate_data:
                raise ConfigError("--auto needs --validate-data")
            sources = average.select(average.resolve_checkpoints(args.sources), args.start_step, args.end_step)
            result = average.auto_average(sources, args.validate_data, args.out, interval=args.interval,
                                          max_ranges=args.max_ranges, batch_size=args.batch_size,
                                          max_batches=args.max_batches, track=not args.no_track).to_dict()
        else:
            chosen = average.select(average.resolve_checkpoints(args.sources), args.start_step, args.end_step)
            result = {"out": str(average.average(chosen, args.out)), "averaged_from": [str(p) for p in chosen]}
    except Raytrain8mError as error:
        return fail(error)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
