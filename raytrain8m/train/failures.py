"""Which training failures Ray Train retries: faults yes, our own errors (bad data, a diverged
run, another model's checkpoint) no. `FailureConfig(max_failures)` retries every worker-group
failure; a DataError would fail the same way on every retry, minutes each, before the run stops.

Ray Train V2 has no public hook for this: `install()` swaps the factory its trainer calls for its
failure policy (`compat.install_failure_policy`); with another Ray it does nothing and the
worker-side record (`ERROR_JSON`, written by `write_error_record`) still gives the driver the error.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

import ray

from raytrain8m.runtime import atomic, compat
from raytrain8m.runtime.errors import Raytrain8mError

log = logging.getLogger(__name__)

ERROR_JSON = "data_error.json"  # in the run directory: a worker's own error (file, record, why)
ERROR_LOG = "error.log"  # in the run directory: the full traceback of a failed fit, Ray's wrapping included


def own_error(error: BaseException | None) -> Raytrain8mError | None:
    """The first of our own errors inside Ray's wrapping (worker failures, task errors, causes).

    A `RayTaskError(DataError)` is an instance of DataError whose text is Ray's whole traceback;
    its `cause` is the original, with the one-line message."""
    failures = list((getattr(error, "worker_failures", None) or {}).values())
    for failure in [*failures, error]:
        seen, hops = failure, 0
        while seen is not None and hops < 32:
            hops += 1
            if isinstance(seen, ray.exceptions.RayTaskError) and getattr(seen, "cause", None) is not None:
                seen = seen.cause
                continue
            if isinstance(seen, Raytrain8mError):
                return seen
            seen = getattr(seen, "cause", None) or seen.__cause__
    return None


@functools.cache
def no_retry_policy() -> type:
    """`NoRetryForOwnErrors`: Ray Train's default policy, except that our own (deterministic)
    errors are not retried. Built on first use, as it extends Train V2's private default class:
    a Ray without it fails `install()` (no policy, faults and errors both retried), not every
    import of this module (the training loop's among them, for `own_error`)."""
    default_policy, decision = compat.default_failure_policy()

    class NoRetryForOwnErrors(default_policy):
        def make_decision(self, training_failed_error):
            error = own_error(training_failed_error)
            if error is not None:
                log.info("not retrying a deterministic error: %s", error)
                return decision.RAISE
            return super().make_decision(training_failed_error)

    return NoRetryForOwnErrors


def install() -> bool:
    """Make Ray Train trainers created in this process use `no_retry_policy()`; False (and a
    warning) where this Ray lacks what it needs."""
    try:
        policy = no_retry_policy()
    except ImportError as error:
        log.warning("Ray Train will retry our own errors too: %s", error)
        return False
    return compat.install_failure_policy(policy)  # the class is the factory: policy(failure_config)


def worker_error(error: Exception, run_dir: Path) -> Exception:
    """The error to show for a failed fit: a worker's own error (from Ray's wrapping, else from the
    record the worker left in the run directory), else `error` itself. Ray's traceback goes to
    `run_dir/error.log`, not to the terminal."""
    import traceback

    from raytrain8m.data.schema import DataError

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(run_dir / ERROR_LOG, "".join(traceback.format_exception(error)))
    except OSError:
        pass
    found = own_error(error)
    if found is not None:
        return found
    record = run_dir / ERROR_JSON
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("type") == "DataError":
            return DataError(saved.get("path"), saved.get("record"), saved.get("why", ""))
        return Raytrain8mError(saved.get("message", ""))
    return error


def write_error_record(run_dir: Path, error: Raytrain8mError, rank: int | None = None) -> None:
    """A worker's own error, for the driver (Ray may wrap it past recognition or retry it).
    `failed_workers` has one entry per worker process that failed with it during this fit: a
    retried attempt would add its own (new processes)."""
    worker = {"rank": rank, "pid": os.getpid()}
    payload = {"type": type(error).__name__, "message": str(error), "path": getattr(error, "path", None),
               "record": getattr(error, "record", None), "why": getattr(error, "why", None),
               "failed_workers": [worker]}
    try:
        previous = json.loads((run_dir / ERROR_JSON).read_text())
        payload["failed_workers"] = [entry for entry in previous.get("failed_workers", []) if entry != worker] \
            + [worker]
    except (OSError, ValueError):
        pass
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_json(run_dir / ERROR_JSON, payload, indent=None)
    except OSError as failure:
        log.warning("could not record the error in %s (%s)", run_dir, failure)
