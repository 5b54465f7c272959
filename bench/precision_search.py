r"""The ensemble search under one size budget with members stored as fp16, as int8, or each at its best.

    make sweep                                   # a 4-model zoo in runs/sweep (about 5 min here)
    python bench/precision_search.py --budget 2.5   # or: --sweep DIR --budget MIB

int8 weights take about half the bytes of fp16 (models/storage.py), so under the same budget
an int8 search may take more or bigger members, at a GAP cost below 1e-3 a member. Both
searches rank every combination of 1..4 zoo members that fits, with equal weights, on the
sweep's holdout files choices are made on (`jobs/ensemble.py --search B --precision P`
without tuning); each table is printed, best first. The third, `auto`, offers every model at
both precisions (int8 shown as A8) and takes one of each model at most.

Last line: one JSON object with `budget_mib`, `fp16_best`, `fp16_gap`, `fp16_size_mib`,
`int8_best`, `int8_gap`, `int8_size_mib`, `int8_minus_fp16` and the number of combinations
each search could rank (`fp16_combinations`, `int8_combinations`); the same for `auto_…`, and
`auto_minus_fp16`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's raytrain8m


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", default="runs/sweep", help="a finished sweep's --out with its zoo.json "
                                                              "(default: %(default)s)")
    parser.add_argument("--budget", type=float, default=2.5,
                        help="MiB, the sum of member sizes at each precision (default: %(default)g, "
                             "which binds on make sweep's zoo)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from raytrain8m.compose.ensemble import format_table, search
    from raytrain8m.runtime.errors import Raytrain8mError
    from raytrain8m.sweep import records as sweep_records

    out = Path(args.sweep).expanduser().absolute()
    figures = {"budget_mib": args.budget}
    try:
        choose, _, split = sweep_records.scoring_data(out)
        for precision in ("fp16", "int8", "auto"):
            rows, _ = search(out / "zoo.json", choose, args.budget, progress=False, precision=precision)
            print(f"\n{precision} members, budget {args.budget:g} MiB, GAP on {split or 'the validate files'}:")
            print(format_table(rows, top=8))
            figures.update({f"{precision}_best": rows[0]["members"], f"{precision}_gap": round(rows[0]["gap"], 5),
                            f"{precision}_size_mib": round(rows[0]["size_mib"], 3),
                            f"{precision}_combinations": len(rows)})
    except Raytrain8mError as error:
        print(f"error: {error} (run `make sweep` first, or pass --sweep DIR)", file=sys.stderr)
        return 2
    figures["int8_minus_fp16"] = round(figures["int8_gap"] - figures["fp16_gap"], 5)
    figures["auto_minus_fp16"] = round(figures["auto_gap"] - figures["fp16_gap"], 5)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
