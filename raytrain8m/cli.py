"""Flags that several commands in jobs/ share (kept free of TensorFlow so `--help` is quick)."""
from __future__ import annotations

import argparse

EVAL_BATCH_SIZE = 256  # videos an evaluation batch


def add_evaluation_flags(parser: argparse.ArgumentParser) -> None:
    """--batch-size, --max-batches and --no-track, for commands that score on a validate split."""
    parser.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE,
                        help="evaluation batch size (default: %(default)s)")
    parser.add_argument("--max-batches", type=int, help="evaluate on at most this many batches (smoke runs)")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
