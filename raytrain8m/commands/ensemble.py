"""Build, weigh and export an ensemble of zoo models (paper 2.3) as one TF graph.

Recipes (CPU is enough; about a minute for tiny synthetic models, minutes per member on real data):

    python jobs/ensemble.py --members YHLS --zoo runs/sweep/zoo.json --out runs/ensemble \\
        --weights 0.39,0.26,0.21,0.14                       # the paper's 10th-place YHLS, 1019.7 MiB
    python jobs/ensemble.py --members YHLS --zoo runs/sweep/zoo.json --out runs/ensemble \\
        --validate-data 'data/synth/validate*.tfrecord' --tune-weights
    python jobs/ensemble.py --members runs/avg/K16-H256,runs/avg/K32-H512 --out runs/ensemble
    python jobs/ensemble.py --search 1024 --precision int8 --zoo runs/sweep/zoo.json \\
        --validate-data 'data/synth/validate*.tfrecord' --out runs/ensemble-int8   # 8-bit members
    python jobs/ensemble.py --search 1024 --precision auto --zoo runs/sweep/zoo.json \\
        --out runs/ensemble-mixed        # each member at fp16 or int8, whichever ranks best
    python jobs/ensemble.py --search 1024 --zoo runs/sweep/zoo.json \\
        --validate-data 'data/synth/validate*.tfrecord' [--tune-weights] [--out runs/ensemble]

SPEC is zoo letters (YHLS) or comma-separated checkpoint directories. Weights that do not
sum to 1 are normalised (with a warning); one weight per member, else an error. The size is
the sum of the members' sizes at --precision (fp16, or int8: big weights as uint8 codes
dequantized in the graph, about half the fp16 size); over --budget (default 1024 MiB) is an error.
--search ranks every zoo combination under BUDGET MiB by validate GAP (the paper's Table 2)
and exports the best one when --out is given; with --precision auto it offers every model at
fp16 and at int8 (shown as A8) and picks each member's precision with the combination. Writes DIR/inference_model/ (the starter's
MetaGraph), DIR/saved_model/, DIR/model_flags.json, DIR/ensemble.json; last line: JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from raytrain8m.models.config import DEFAULT_BUDGET_MIB, SEARCH_AUTO, SEARCH_PRECISIONS
from raytrain8m.runtime.cli import LOG_NAMED, Parser, add_evaluation_flags, add_verbose_flag, console
from raytrain8m.runtime.errors import Raytrain8mError, fail


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = Parser(description=__doc__)
    parser.add_argument("--members", help="zoo letters (YHLS) or comma-separated checkpoint directories")
    parser.add_argument("--out", help="the export directory (written atomically)")
    parser.add_argument("--weights", help="w1,w2,… one per member; normalised to sum 1 with a warning "
                                          "(default: equal)")
    parser.add_argument("--tune-weights", action="store_true",
                        help="coordinate search on the simplex for the best validate GAP (needs --validate-data)")
    parser.add_argument("--search", type=float, metavar="BUDGET_MIB",
                        help="rank zoo combinations whose sizes fit BUDGET_MIB by validate GAP")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_MIB,
                        help="size budget in MiB, sum of member sizes at --precision (default: %(default)g)")
    parser.add_argument("--precision", choices=SEARCH_PRECISIONS, default="fp16",
                        help="how the export stores the members' big weights (default: %(default)s); "
                             f"{SEARCH_AUTO}: --search picks each member's")
    parser.add_argument("--zoo", help="zoo.json (needed for letters and --search), e.g. runs/sweep/zoo.json")
    parser.add_argument("--validate-data", help="validate split glob: member and ensemble GAPs, tuning, search")
    parser.add_argument("--average", action=argparse.BooleanOptionalAction, default=True,
                        help="zoo members: use their averaged checkpoints (default) or their best single "
                             "checkpoints (checkpoint paths are used as given)")
    parser.add_argument("--predictions-dir", help="keep the members' validate predictions here (float16, "
                                                  "videos × classes × 2 bytes a member; default: a temporary "
                                                  "directory, removed)")
    parser.add_argument("--max-members", type=int, default=4, help="--search: at most this many members")
    add_evaluation_flags(parser)
    add_verbose_flag(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console(args.verbose, tensorflow=True, log_format=LOG_NAMED)
    from raytrain8m.compose.ensemble import make_ensemble, parse_weights

    try:
        result = make_ensemble(args.members, args.out, weights=parse_weights(args.weights),
                               tune=args.tune_weights, search_budget_mib=args.search, budget_mib=args.budget,
                               zoo_path=args.zoo, validate_data=args.validate_data, average=args.average,
                               batch_size=args.batch_size, max_batches=args.max_batches,
                               max_members=args.max_members, track=not args.no_track,
                               predictions_dir=args.predictions_dir, precision=args.precision)
    except Raytrain8mError as error:
        return fail(error)
    if result.table:
        print(result.table)
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
