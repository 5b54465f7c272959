"""The commands, one module per stage, and `raytrain8m <command> [flags…]` that runs them.

Each module holds a stage's flags and `main(argv=None) -> int` (0: done; 2: a bad flag, path or
input, one `error: …` line). `jobs/<command>.py` is the door `ray job submit … -- python
jobs/<command>.py` runs: it calls the same `main`. This package imports no stage until one is
asked for, so `raytrain8m --help` answers at once; a stage's own `--help` and a bad flag answer
without TensorFlow, Ray or MLflow (each command imports them inside `main`).
"""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

PROG = "raytrain8m"

# command → what it does (one line; its `jobs/<command>.py` door opens with the same words).
# In the order of the pipeline.
COMMANDS = {
    "synth": "Write a synthetic YouTube-8M in the official frame-level TFRecord format",
    "sizes": "Model sizes (fp32/fp16/int8 MiB, parameters) from the variables each model builds",
    "train": "Train one model (Gated NetVLAD or NeXtVLAD) on Ray Train, tracked in MLflow",
    "evaluate": "Score a checkpoint on a labelled split (GAP, Hit@1, PERR; mAP on request)",
    "sweep": "Train a grid of models on Ray Tune, then build the zoo (the paper's Table 1)",
    "zoo": "Show the model zoo, pin letters, or print it as JSON",
    "average": "Average a model's checkpoints: a step range, a list, or an --auto search",
    "compress": "Compress a checkpoint to fp16 or int8",
    "ensemble": "Build, weigh and export an ensemble of zoo models as one TF graph",
    "infer": "Predict the test set with an exported ensemble and write the Kaggle submission CSV",
    "distill": "Distil a student model from a teacher ensemble on Ray Train",
    "demo": "The whole pipeline on the embedded default, end to end",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    return "\n".join([
        f"usage: {PROG} <command> [flags…]",
        "",
        "Train, compress and ensemble size-constrained YouTube-8M video classifiers on Ray.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {purpose}" for name, purpose in COMMANDS.items()),
        "",
        f"`{PROG} <command> --help` shows a command's flags and recipes. `python jobs/<command>.py …`",
        "runs the same command (it is what `ray job submit … -- python jobs/<command>.py` runs).",
        "",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    """Run `raytrain8m <command> [flags…]`: the command module's `main(flags)`, its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        sys.stdout.write(usage())
        return 0
    if not args:
        sys.stderr.write(usage())
        sys.stderr.write(f"error: no command given (see {PROG} --help)\n")
        return 2
    command, flags = args[0], args[1:]
    if command not in COMMANDS:
        sys.stderr.write(f"error: unknown command {command!r} (choose from {', '.join(COMMANDS)})\n")
        return 2
    module = importlib.import_module(f"{__name__}.{command}")
    saved = sys.argv[:1]
    sys.argv[:1] = [f"{PROG} {command}"]  # argparse's program name: `usage: raytrain8m train …`
    try:
        return module.main(flags)
    finally:
        sys.argv[:1] = saved
