"""The whole raytrain8m pipeline on the embedded default, end to end.

    make demo                      # = python jobs/demo.py --scale default
        # 2 CPU cores, no GPU: 3-5 min after installation. Local Ray, synthetic data in the
        # official format under data/demo-default/, MLflow in runs/mlflow.db. Ends with
        # runs/demo/report.md, runs/demo/submission.csv and the zoo/ensemble tables.
    python jobs/demo.py --scale tiny     # 2-3 min: what the test suite runs
    make demo DEMO_SCALE=large           # a bigger grid (tens of minutes on CPU), beyond the paper too
    make demo BEYOND=1                   # = --beyond: int8-aware search and a distilled student (+3 min)

Stages: synthesise → sweep a K×H grid on Ray Tune/Train → zoo (score checkpoints, average
the best range, drop inferior models) → fp16 → ensemble searched under a budget scaled
from the paper's 1 GiB → MetaGraph + SavedModel export → Ray Data inference → report.
--beyond (on at --scale large): after the zoo, a student distilled from its best ensemble
under the budget joins it, and the search holds each member at fp16 or int8.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from raytrain8m.models.config import member_label
from raytrain8m.pipeline.demo import SCALES, run_demo
from raytrain8m.runtime.cli import LOG_NAMED, add_verbose_flag, console
from raytrain8m.runtime.errors import Raytrain8mError, fail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="default", choices=sorted(SCALES), help="how big a demo")
    parser.add_argument("--data", default="data", help="where the synthetic data goes (kept, reused)")
    parser.add_argument("--runs", default="runs", help="where the runs go (runs/demo is made anew)")
    parser.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: what fits)")
    parser.add_argument("--beyond", action="store_true",
                        help="beyond the paper: a distilled student joins the zoo, members searched at fp16 or int8")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    console(args.verbose, tensorflow=True, log_format=LOG_NAMED)
    os.environ.setdefault("RAYTRAIN8M_RUNS", args.runs)  # the default MLflow store lives under --runs
    try:
        summary = run_demo(args.scale, args.data, args.runs, args.max_concurrent, args.beyond)
    except Raytrain8mError as error:
        return fail(error)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    ensemble = summary["ensemble"]
    members = " + ".join(member_label(m.get("letter"), m.get("precision"), m["name"]) for m in ensemble["members"])
    weights = ", ".join(f"{w:.2f}" for w in ensemble["weights"])
    print(f"\n{summary['zoo_table']}\n")
    print(f"ensemble: {members}  weights ({weights})  {ensemble['size_mib']:.3f} MiB "
          f"(budget {summary['budget_mib']:.2f})  validate GAP {ensemble['validate_gap']:.4f}")
    print(f"predictions: {summary['submission']['out']} ({summary['submission']['videos']} videos)")
    print(f"report: {summary['report']}   ({summary['total_s']:.0f} s in all)")
    print("MLflow UI: make mlflow-ui   (then open http://127.0.0.1:5000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
