"""Compress a checkpoint to fp16 (the paper) or int8 (8-bit codes dequantized in the graph).

Recipes (CPU is enough; seconds for a K16-H256, about a minute with --validate-data on the
synthetic split):

    python jobs/compress.py runs/avg/K16-H256 --out runs/int8/K16-H256 --precision int8 \\
        --validate-data 'data/synth/validate*.tfrecord'     # 158.65 -> 40.14 MiB (-74.7%)
    python jobs/compress.py runs/avg/K16-H256 --out runs/fp16/K16-H256   # 158.65 -> 80.21 MiB
    python jobs/compress.py runs/avg/K16-H256 --out runs/cb/K16-H256 --precision int8 --int8-scheme codebook

int8 stores every weight of two or more dimensions and at least 1024 values as uint8 codes
plus a per-column scale and offset (`affine`, the default: it kept the GAP change under 1e-3
on every model measured, the codebook not always; README) or a 256-value table (`codebook`). The output is a checkpoint every
tool reads (evaluate, ensemble, export). Last line: a JSON report (sizes, GAP before/after).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from raytrain8m.models.config import INT8_SCHEMES, MEMBER_PRECISIONS
from raytrain8m.runtime.cli import LOG_PLAIN, Parser, add_evaluation_flags, add_verbose_flag, console
from raytrain8m.runtime.errors import Raytrain8mError, fail


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = Parser(description=__doc__)
    parser.add_argument("checkpoint", help="the checkpoint directory to compress (fp32, or fp16/int8 again)")
    parser.add_argument("--out", required=True, help="the compressed checkpoint directory to write")
    parser.add_argument("--precision", choices=MEMBER_PRECISIONS, default="fp16", help="default: %(default)s")
    parser.add_argument("--int8-scheme", choices=INT8_SCHEMES, default="affine",
                        help="int8: per-column scale and offset, or a 256-value codebook (default: %(default)s)")
    parser.add_argument("--validate-data", help="validate split glob: GAP before and after")
    add_evaluation_flags(parser)
    add_verbose_flag(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console(args.verbose, tensorflow=True, log_format=LOG_PLAIN)
    from raytrain8m.compose.compress import compress_checkpoint

    try:
        report = compress_checkpoint(args.checkpoint, args.out, validate_data=args.validate_data,
                                     batch_size=args.batch_size, max_batches=args.max_batches,
                                     precision=args.precision, scheme=args.int8_scheme)
    except Raytrain8mError as error:
        return fail(error)
    print(json.dumps(report.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
