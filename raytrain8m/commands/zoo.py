"""Show the model zoo (the paper's Table 1 for your sweep), pin letters, or print it as JSON.

    python jobs/zoo.py runs/sweep/zoo.json                    # the table (any machine, < 1 s)
    python jobs/zoo.py runs/sweep/zoo.json --pin Y=K24-H1440  # keep letter Y on K24-H1440 for good
    python jobs/zoo.py runs/sweep/zoo.json --json             # every entry: sizes, GAPs, checkpoints

`jobs/sweep.py` writes zoo.json after training: inferior models (larger and no better than
another) are eliminated, the rest lettered by decreasing size. Pinned letters survive later
rebuilds of the zoo, so ensemble specs like `YHLS` keep meaning the same models.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from raytrain8m.runtime.cli import Parser, add_verbose_flag, console
from raytrain8m.runtime.errors import ConfigError, Raytrain8mError, fail
from raytrain8m.select.zoo import load_zoo


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = Parser(description=__doc__)
    parser.add_argument("zoo", nargs="?", default="runs/sweep/zoo.json", help="zoo.json (default: %(default)s)")
    parser.add_argument("--pin", action="append", default=[], metavar="LETTER=MODEL",
                        help="pin a letter to a model, e.g. Y=K24-H1440 (repeatable); saves zoo.json")
    parser.add_argument("--json", action="store_true", help="print the zoo as JSON instead of the table")
    add_verbose_flag(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console(args.verbose, tensorflow=True)
    try:
        zoo = load_zoo(args.zoo)
        for pin in args.pin:
            letter, _, name = pin.partition("=")
            if len(letter) != 1 or not name:
                raise ConfigError(f"--pin {pin!r}: write LETTER=MODEL, e.g. Y=K24-H1440")
            zoo.pin(letter, name)
        if args.pin:
            zoo.save(args.zoo)
    except Raytrain8mError as error:
        return fail(error)
    print(json.dumps(zoo.to_dict(), indent=2) if args.json else zoo.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
