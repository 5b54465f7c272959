"""Score a checkpoint on a labelled split; prints its metrics as one JSON object.

Recipe (CPU is fine; about 1 min per 10k videos for K16-H256 on 8 cores):

    python jobs/evaluate.py --checkpoint runs/train/K16-H256/checkpoint_00200000 \\
        --data 'gs://BUCKET/yt8m/frame/validate*.tfrecord'
    # → {"gap": 0.85…, "hit_at_one": …, "perr": …, "map": null, "examples": …, "step": 200000, …}

GAP, Hit@1 and PERR keep each video's top 20 (memory O(videos × 20)). --map adds mAP, which
holds every prediction in memory (videos × classes × 4 bytes: 17 GB on the full validate set).

The metrics also go to MLflow as a run `evaluate K16-H256@200000` (stage tag `evaluate`).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from raytrain8m.runtime.cli import LOG_PLAIN, Parser, add_skip_corrupt, add_verbose_flag, console, positive_int
from raytrain8m.runtime.errors import Raytrain8mError, fail


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = Parser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint directory (holds model.json)")
    parser.add_argument("--data", required=True, help="glob or URI of labelled .tfrecord files")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="videos a batch (default: %(default)s)")
    add_skip_corrupt(parser)
    parser.add_argument("--map", action="store_true",
                        help="also mAP (keeps every prediction in memory: videos × classes × 4 bytes)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-track", action="store_true", help="do not log the metrics to MLflow")
    add_verbose_flag(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console(args.verbose, tensorflow=True, log_format=LOG_PLAIN, log_level=logging.WARNING)
    try:
        from raytrain8m.records.evaluate import evaluate_checkpoint
        metrics = evaluate_checkpoint(args.checkpoint, args.data, batch_size=args.batch_size,
                                      progress=not args.no_progress, track=not args.no_track,
                                      skip_corrupt=args.skip_corrupt, mean_ap=args.map)
    except Raytrain8mError as error:
        return fail(error)
    print(json.dumps(metrics, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
