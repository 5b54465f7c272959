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


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="also show TensorFlow's and Ray's own logs (default: this command's progress "
                             "and result; Ray's full logs stay in /tmp/ray/session_latest/logs)")


def console(verbose: bool, tensorflow: bool = False) -> None:
    """Quiet by default, verbose on request, for this process and the Ray workers it starts;
    call right after parsing flags, before TensorFlow or Ray is imported. `tensorflow`: the
    command uses it, import it now without its start-up banner."""
    import os

    from raytrain8m import localray

    if verbose:
        os.environ["RAYTRAIN8M_VERBOSE"] = "1"
    localray.quiet_process(verbose)
    if tensorflow and not verbose:
        localray.import_tensorflow_quietly()
