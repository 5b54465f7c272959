"""Predict the test set with an exported ensemble; write the Kaggle submission CSV.

Recipes (a local Ray starts; on a cluster: `ray job submit --working-dir . -- python jobs/infer.py …`):

    python jobs/infer.py --model runs/ensemble --data 'data/synth/test*.tfrecord' --out runs/submission.csv
    python jobs/infer.py --model runs/ensemble --data 'gs://BUCKET/test*.tfrecord' --out sub.csv --workers 8 --use-gpu

Under a minute for the synthetic test split on 2 CPUs (mostly Ray and TensorFlow start-up);
one actor per input file at a time, so the real test set (3844 files) spreads over every
worker. Each input file becomes a part in OUT.parts/ as it
finishes, so an interrupted run restarts where it stopped; the CSV (header
`VideoId,LabelConfidencePairs`, the 20 most confident `label confidence` pairs per video)
is written only when every file is done. Last line: a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from raytrain8m.runtime.cli import (
    LOG_NAMED,
    Parser,
    add_skip_corrupt,
    add_verbose_flag,
    check_output,
    console,
    positive_int,
)
from raytrain8m.runtime.errors import Raytrain8mError, fail


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = Parser(description=__doc__)
    parser.add_argument("--model", required=True, help="an export directory of jobs/ensemble.py")
    parser.add_argument("--data", required=True, help="test files: glob, path or URI (gs://, s3://)")
    parser.add_argument("--out", required=True, help="the submission CSV to write")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="videos per forward pass (default: %(default)s)")
    parser.add_argument("--workers", type=positive_int, help="inference actors (default: one per GPU with --use-gpu, "
                                                    "else one per 2 CPUs)")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per actor")
    add_skip_corrupt(parser)
    parser.add_argument("--no-track", action="store_true", help="do not log the run to MLflow")
    parser.add_argument("--source", choices=("saved_model", "meta_graph"), default="saved_model",
                        help="which form of the export the actors load (default: %(default)s)")
    add_verbose_flag(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console(args.verbose, tensorflow=True, log_format=LOG_NAMED)
    try:
        check_output(args.out, directory=False)  # before TensorFlow and Ray start
        from raytrain8m.compose.infer import infer
        summary = infer(args.model, args.data, args.out, batch_size=args.batch_size, workers=args.workers,
                        use_gpu=args.use_gpu, source=args.source, track=not args.no_track,
                        skip_corrupt=args.skip_corrupt)
    except Raytrain8mError as error:
        return fail(error)
    print(json.dumps(summary.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
