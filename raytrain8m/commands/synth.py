"""Write a synthetic YouTube-8M (official frame-level TFRecord format) that models can learn.

    python jobs/synth.py --out data/synth --videos 2000 --classes 100 --max-frames 100 --shards 4 --seed 0
        # any CPU, ~5 s, ~150 MB: data/synth/{train,validate,test}000N.tfrecord (test unlabelled)
    python jobs/synth.py --out data/smoke --smoke      # 120 videos, 20 classes, 12 frames, < 1 s

Labels come from latent topics (Zipf-skewed, ~3 a video); frames from each topic's clusters,
so frame-level models (NetVLAD) beat mean pooling. Same seed, same bytes. Prints a JSON summary.
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
from typing import Sequence

from raytrain8m.data.synthetic import generate
from raytrain8m.runtime.cli import add_verbose_flag, console
from raytrain8m.runtime.errors import Raytrain8mError, fail


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory or URI")
    parser.add_argument("--videos", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--max-frames", type=int, default=100)
    parser.add_argument("--shards", type=int, default=4, help="files per split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--video-level", action="store_true",
                        help="write video-level tf.train.Example (mean_rgb, mean_audio)")
    defaults = inspect.signature(generate).parameters  # one default per setting: generate's
    parser.add_argument("--validate-fraction", type=float,
                        default=defaults["validate_fraction"].default)
    parser.add_argument("--test-fraction", type=float, default=defaults["test_fraction"].default)
    parser.add_argument("--topic-offset", type=float, default=defaults["topic_offset"].default,
                        help="how much of a topic survives mean pooling (0: only frame clusters "
                             "carry it, as NetVLAD sees; larger: mean pooling catches up)")
    parser.add_argument("--label-noise", type=float, default=defaults["label_noise"].default,
                        help="share of TRAIN labels replaced by a uniformly drawn class (validate and "
                             "test stay clean; 0: the same bytes as without the option)")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny set: 120 videos, 20 classes, 12 frames, 2 shards")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    console(args.verbose)
    if args.smoke:
        args.videos, args.classes, args.max_frames, args.shards = 120, 20, 12, 2
    try:
        summary = generate(args.out, args.videos, args.classes, args.max_frames, args.shards,
                           args.seed, video_level=args.video_level,
                           validate_fraction=args.validate_fraction,
                           test_fraction=args.test_fraction, topic_offset=args.topic_offset,
                           label_noise=args.label_noise)
    except Raytrain8mError as error:
        return fail(error)
    summary.pop("label_frequency")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
