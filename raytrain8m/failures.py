"""Which training failures Ray Train retries: faults yes, our own errors (bad data, a diverged
run, another model's checkpoint) no. `FailureConfig(max_failures)` retries every worker-group
failure; a DataError would fail the same way on every retry, minutes each, before the run stops.

Ray Train V2 has no public hook for this: `install()` swaps the factory its trainer calls for its
failure policy (`compat.install_failure_policy`); with another Ray it does nothing and the
worker-side record (`train.ERROR_JSON`) still gives the driver the error.
"""
from __future__ import annotations

import functools
import logging

import ray

from raytrain8m import compat
from raytrain8m.errors import Raytrain8mError

log = logging.getLogger(__name__)


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
