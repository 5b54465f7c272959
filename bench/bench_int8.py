"""What 8-bit weights cost: size and validate GAP per model at fp32, fp16 and int8 (affine, codebook).

    python bench/bench_int8.py       # tiny in-process set: synthetic data (720 validate videos), 3 models
                                     # trained here, seeded (about 2 min on 2 CPUs)
    python bench/bench_int8.py --checkpoints runs/avg/K16-H256 runs/avg/K32-H512 \\
        --validate-data 'data/synth/validate*.tfrecord'

Prints a table per model and the sizes of the paper's models (3862 classes) at each
precision; the last line is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Sequence

PAPER_MODELS = ("K24-H1440", "K32-H1024", "K16-H800", "K32-H512", "K16-H256")
VARIANTS = (("fp16", "affine"), ("int8", "affine"), ("int8", "codebook"))


def tiny_set(work: Path, steps: int) -> tuple[list[Path], str]:
    from raytrain8m.data.synthetic import generate

    from bench_ensemble import train_tiny_run

    data = work / "data"
    generate(str(data), videos=1200, classes=20, max_frames=12, shards=1, seed=0, validate_fraction=0.6,
             test_fraction=0.05, progress=False)
    checkpoints = []
    for cluster_size, hidden_size, seed in ((4, 16, 1), (8, 24, 2), (16, 48, 3)):
        run = train_tiny_run(data, work / f"K{cluster_size}-H{hidden_size}", cluster_size, hidden_size, seed,
                             steps=steps, every=steps)
        checkpoints.append(run / f"checkpoint_{steps:08d}")
    return checkpoints, str(data / "validate*.tfrecord")


def bench(checkpoints: Sequence[Path], validate: str, work: Path) -> dict:
    from raytrain8m.compose.compress import compress_checkpoint
    from raytrain8m.models import ModelConfig, size_mib

    rows = []
    for checkpoint in checkpoints:
        row: dict = {"checkpoint": str(checkpoint)}
        for precision, scheme in VARIANTS:
            label = precision if precision == "fp16" else f"int8_{scheme}"
            report = compress_checkpoint(checkpoint, work / "compressed" / Path(checkpoint).name / label, validate,
                                         progress=False, precision=precision, scheme=scheme)
            row.update({"model": report.model, "fp32_mib": report.fp32_mib, "gap_fp32": report.gap_fp32,
                        f"{label}_mib": report.compressed_mib, f"gap_{label}": report.gap_compressed,
                        f"gap_change_{label}": report.gap_change})
        rows.append(row)
    paper = [{"model": name, "fp32_mib": round(size_mib(config), 2), "fp16_mib": round(size_mib(config, True), 2),
              "int8_mib": round(size_mib(config.replace(int8="affine")), 2)}
             for name in PAPER_MODELS for config in [ModelConfig.from_name(name)]]
    labels = [p if p == "fp16" else f"int8_{s}" for p, s in VARIANTS]
    worst = {label: max(abs(row[f"gap_change_{label}"]) for row in rows) for label in labels}
    smallest_saving = {label: min(1 - row[f"{label}_mib"] / row["fp32_mib"] for row in rows) for label in labels}
    return {"models": rows, "paper_sizes": paper, "max_abs_gap_change": worst,
            "min_size_saving": smallest_saving}


def table(result: dict) -> str:
    labels = [p if p == "fp16" else f"int8_{s}" for p, s in VARIANTS]
    header = f"{'model':<10}{'variant':<15}{'MiB':>9}{'smaller':>9}{'GAP':>9}{'change':>11}"
    lines = [header, "-" * len(header)]
    for row in result["models"]:
        lines.append(f"{row['model']:<10}{'fp32':<15}{row['fp32_mib']:>9.3f}{'':>9}{row['gap_fp32']:>9.4f}")
        for label in labels:
            lines.append(f"{'':<10}{label:<15}{row[label + '_mib']:>9.3f}"
                         f"{1 - row[label + '_mib'] / row['fp32_mib']:>9.1%}{row['gap_' + label]:>9.4f}"
                         f"{row['gap_change_' + label]:>+11.5f}")
    lines += ["", f"{'paper model':<12}{'fp32 MiB':>10}{'fp16 MiB':>10}{'int8 MiB':>10}{'int8 smaller':>14}"]
    for row in result["paper_sizes"]:
        lines.append(f"{row['model']:<12}{row['fp32_mib']:>10.2f}{row['fp16_mib']:>10.2f}{row['int8_mib']:>10.2f}"
                     f"{1 - row['int8_mib'] / row['fp32_mib']:>14.1%}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", help="fp32 checkpoint directories (default: train a tiny set)")
    parser.add_argument("--validate-data", help="validate split glob (with --checkpoints)")
    parser.add_argument("--steps", type=int, default=300, help="tiny set: training steps a model")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as work:
        if args.checkpoints:
            if not args.validate_data:
                parser.error("--checkpoints needs --validate-data")
            checkpoints, validate = [Path(p) for p in args.checkpoints], args.validate_data
        else:
            checkpoints, validate = tiny_set(Path(work), args.steps)
        result = bench(checkpoints, validate, Path(work))
    print(table(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
