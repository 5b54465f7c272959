"""One exception type per failure family, shown once at the command's door."""
from __future__ import annotations


class Raytrain8mError(Exception):
    """Base class: commands print these plainly and exit non-zero."""


class ConfigError(Raytrain8mError, ValueError):
    """A flag, config key or model name that cannot be used."""


class CheckpointError(Raytrain8mError):
    """A checkpoint that is missing, unreadable or of a different model."""


class TrainingError(Raytrain8mError):
    """Training cannot go on (a non-finite loss or weights, an empty data shard)."""


class BudgetError(Raytrain8mError):
    """An ensemble larger than its size budget."""


def fail(error: Exception) -> int:
    """A command's door: show the error once, plainly (no traceback), and give exit status 2."""
    import sys

    print(f"error: {error}", file=sys.stderr)
    return 2
