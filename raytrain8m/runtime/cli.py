"""Flags that several commands (raytrain8m/commands/) share (kept free of TensorFlow so `--help` is quick)."""
from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path

from raytrain8m.runtime.errors import ConfigError

EVAL_BATCH_SIZE = 256  # videos an evaluation batch


class Parser(argparse.ArgumentParser):
    """argparse, with a bad flag shown as one `error: …` line (exit 2) like every other error, and
    values that start with a minus sign (`--weights -1,2`) taken as values, not as flags."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        # argparse's own pattern takes only `-1` or `-.5` for a number; `-1,2` would be a flag.
        self._negative_number_matcher = re.compile(r"^-\.?\d[\d.,eE+-]*$")

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_skip_corrupt(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-corrupt", action="store_true",
                        help="leave out records that fail their CRC or do not decode (counted, logged and "
                             "reported as `skipped_records`) instead of stopping at the first")


def add_evaluation_flags(parser: argparse.ArgumentParser) -> None:
    """--batch-size, --max-batches, --skip-corrupt and --no-track, for commands that score on a
    validate split."""
    parser.add_argument("--batch-size", type=positive_int, default=EVAL_BATCH_SIZE,
                        help="evaluation batch size (default: %(default)s)")
    parser.add_argument("--max-batches", type=positive_int,
                        help="evaluate on at most this many batches (smoke runs)")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="also show TensorFlow's and Ray's own logs (default: this command's progress "
                             "and result; Ray's full logs: ray_logs in the run directory)")


LOG_NAMED = "%(levelname)s %(name)s: %(message)s"  # a command's log lines, by module
LOG_PLAIN = "%(message)s"


def console(verbose: bool, tensorflow: bool = False, log_format: str | None = None,
            log_level: int = logging.INFO) -> None:
    """Quiet by default, verbose on request, for this process and the Ray workers it starts;
    call right after parsing flags, before TensorFlow or Ray is imported. `tensorflow`: the
    command uses it, import it now without its start-up banner. `log_format`: the command's
    own log lines go to the console in it, from `log_level` up."""
    import os

    from raytrain8m.runtime import localray

    if verbose:
        os.environ["RAYTRAIN8M_VERBOSE"] = "1"
    localray.quiet_process(verbose)
    if tensorflow and not verbose:
        localray.import_tensorflow_quietly()
    if log_format is not None:
        logging.basicConfig(level=log_level, format=log_format)


def check_output(path: str | os.PathLike, flag: str = "--out", directory: bool = True) -> None:
    """Refuse, before any work, an output that cannot be written: a directory `path` that is a
    file, a file `path` that is a directory, one under a regular file, or one in a directory without
    write permission. URIs (gs://, s3://) are left to their filesystem."""
    text = os.fspath(path)
    if "://" in text:
        return
    target = Path(text).expanduser().absolute()
    if target.exists():
        if directory and not target.is_dir():
            raise ConfigError(f"{flag} {text}: a file, not a directory")
        if not directory and target.is_dir():
            raise ConfigError(f"{flag} {text}: a directory, not a file")
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{flag} {text}: {ancestor} is a file, not a directory")
    if not os.access(target if target.is_dir() else ancestor, os.W_OK):
        raise ConfigError(f"{flag} {text}: {target if target.is_dir() else ancestor} is not writable")
