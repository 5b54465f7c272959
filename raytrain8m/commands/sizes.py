"""Model sizes (fp32 / fp16 / int8 MiB, parameters) from the variables each model really builds.

Recipe (any machine, no GPU, about 10 s; the Gated NetVLAD figures equal the paper's Table 1):

    python jobs/sizes.py                       # the paper's 18 Table-1 models, then NeXtVLAD's reference settings
    python jobs/sizes.py K24-H1440 K16-H256    # → 714.93 / 381.40 and 158.65 / 80.21 MiB
    python jobs/sizes.py nextvlad              # NX-K128-H2048 (88,970,274 parameters), NX-K112-H2048-R16 (78.7M)
    python jobs/sizes.py K16-H256 NX-K16-H256 --classes 20 --json

`paper` and `nextvlad` stand for those two lists.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from raytrain8m.models import ModelConfig
from raytrain8m.runtime.cli import add_verbose_flag, console
from raytrain8m.runtime.errors import Raytrain8mError, fail

# Table 1 of the paper, largest first (letters Y G F X H K L J A N S O T Q E R M P).
TABLE1_MODELS = (
    "K24-H1440", "K32-H1280", "K100-H800", "K16-H1280", "K32-H1024", "K20-H960", "K16-H800",
    "K64-H512", "K100-H400", "K32-H600", "K32-H512", "K16-H512", "K8-H512", "K16-H400",
    "K10-H400", "K32-H256", "K10-H300", "K16-H256",
)
# NeXtVLAD (Lin et al. 2018): the paper's single model and the final mixture's branch.
NEXTVLAD_MODELS = ("NX-K128-H2048", "NX-K112-H2048-R16")
ALIASES = {"paper": TABLE1_MODELS, "nextvlad": NEXTVLAD_MODELS}


def sizes(names: Sequence[str], num_classes: int) -> list[dict]:
    from raytrain8m.models import built_size  # builds the variables: TensorFlow, not for --help

    rows = []
    for name in (part for name in names for part in ALIASES.get(name, (name,))):
        config = ModelConfig.from_name(name, num_classes=num_classes)
        fp32_mib, parameters = built_size(config)
        fp16_mib, _ = built_size(config.replace(fp16=True))
        int8_mib, _ = built_size(config.replace(int8="affine"))
        rows.append({"name": config.name, "family": config.family, "cluster_size": config.cluster_size,
                     "hidden_size": config.hidden_size, "num_classes": num_classes, "params": parameters,
                     "parameters": parameters, "fp32_mib": round(fp32_mib, 2), "fp16_mib": round(fp16_mib, 2),
                     "int8_mib": round(int8_mib, 2)})
    return rows


def table(rows: Sequence[dict]) -> str:
    width = max(10, *(len(row["name"]) for row in rows))
    lines = [f"{'model':<{width}} {'family':<13} {'parameters':>12} {'fp32 MiB':>9} {'fp16 MiB':>9} {'rate':>6} "
             f"{'int8 MiB':>9} {'rate':>6}"]
    for row in rows:
        rate = 1 - row["fp16_mib"] / row["fp32_mib"]
        rate8 = 1 - row["int8_mib"] / row["fp32_mib"]
        lines.append(f"{row['name']:<{width}} {row['family']:<13} {row['params']:>12,} {row['fp32_mib']:>9.2f} "
                     f"{row['fp16_mib']:>9.2f} {rate:>6.1%} {row['int8_mib']:>9.2f} {rate8:>6.1%}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=["paper", "nextvlad"],
                        help="model names K<cluster>-H<hidden> or NX-K<cluster>-H<hidden>[-G<g>][-E<λ>][-R<r>], "
                             "or `paper` / `nextvlad` (default: both lists)")
    parser.add_argument("--classes", type=int, default=ModelConfig.num_classes,
                        help="number of classes V (default: %(default)s, the 2018 vocabulary)")
    parser.add_argument("--json", action="store_true", help="print one JSON array instead of a table")
    add_verbose_flag(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console(args.verbose, tensorflow=True)
    try:
        rows = sizes(args.models, args.classes)
    except Raytrain8mError as error:
        return fail(error)
    print(json.dumps(rows, indent=2) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
