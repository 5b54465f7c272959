"""Every place raytrain8m leans on something a Ray or Keras release may change without notice.

Each hook here is either a private name (underscore or `_internal`) or a developer API, and
`tests/test_compat.py` checks each one against the installed versions, so an upgrade that
removes one fails there, by name, rather than somewhere downstream. Where a hook is missing at
run time the code falls back to something slower or noisier, never to something wrong, unless
the docstring says it raises.

- `TensorflowBackendConfig`: Ray Train's TensorFlow set-up (TF_CONFIG on each worker) without
  `ray.train.tensorflow`, whose import pulls TensorFlow into the process that builds the
  trainer and into Ray Train's controller (≈9 s each on 2 cores, on every run's start-up path).
- `install_failure_policy`: our own (deterministic) errors are not retried by Ray Train.
- `quiet_ray_train_reports`: Ray Train's per-report INFO line on every worker.
- `train_run_worker_nodes`: which nodes a Train run's workers ran on (Train's state actor).
- `filter_raylet_messages`: drop known raylet chatter on the driver's console.
- `without_gradient_sum`: a Keras 3 optimizer that applies already all-reduced gradients.
- `pace_data_scheduling`: Ray Data's scheduling loop, which spins while its outputs wait.
- `DataParallelTrainer`: Train V2's trainer, less its PlacementGroupCleaner where Ray serves no
  State API.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
from typing import Any, Callable

import ray
from ray.train import BackendConfig
from ray.train.backend import Backend  # developer API

# Train V2's trainer, which `ray.train.tensorflow.TensorflowTrainer` extends: imported from
# `ray.train.v2.api` so that TensorFlow is not.
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer as _DataParallelTrainer

from raytrain8m.runtime import settings

try:  # Train V2's watchdog of a run's placement group (`DataParallelTrainer`)
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
except ImportError:
    PlacementGroupCleanerCallback = None

try:  # Ray Data's execution callbacks (`pace_data_scheduling`); already imported by ray.train
    from ray.data._internal.execution.execution_callback import ExecutionCallback
except ImportError:
    ExecutionCallback = None

log = logging.getLogger(__name__)

KERAS_GRADIENT_SUM = "_all_reduce_sum_gradients"  # Keras 3's TF backend: sums across replicas
CHECKPOINT_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Train V2: the checkpoints it registered


class DataParallelTrainer(_DataParallelTrainer):
    """Train V2's trainer; where Ray serves no State API (`settings.state_api`: a local Ray
    without its dashboard) it runs without its PlacementGroupCleaner. That cleaner is a
    detached actor, so one more process start on every run's start-up path, which asks the
    State API each second whether the controller still lives, to remove the run's placement
    group if it died. Without the API it can only fail, logging so, each second of the run."""

    def _create_default_callbacks(self) -> list:
        callbacks = super()._create_default_callbacks()
        if settings.state_api() or PlacementGroupCleanerCallback is None:
            return callbacks
        return [callback for callback in callbacks if not isinstance(callback, PlacementGroupCleanerCallback)]


def _worker_address() -> str:
    """This node's address and a free port, for TensorFlow's gRPC server."""
    address = ray.util.get_node_ip_address()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        port = probe.getsockname()[1]
    return f"[{address}]:{port}" if family == socket.AF_INET6 else f"{address}:{port}"


def _set_tf_config(workers: list[str], index: int) -> None:
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


class _TensorflowBackend(Backend):
    def on_start(self, worker_group, backend_config) -> None:
        workers = worker_group.execute(_worker_address)
        ray.get([worker_group.execute_single_async(index, _set_tf_config, workers=workers, index=index)
                 for index in range(len(worker_group))])


@dataclasses.dataclass
class TensorflowBackendConfig(BackendConfig):
    """What `ray.train.tensorflow.TensorflowConfig` does for MultiWorkerMirroredStrategy (each
    worker's TF_CONFIG lists every worker's address and its own index), minus its
    `TF_USE_LEGACY_KERAS=1` (we use Keras 3) and its import of TensorFlow."""

    @property
    def backend_cls(self):
        return _TensorflowBackend


def install_failure_policy(make_policy: Callable[[Any], Any]) -> bool:
    """Make Ray Train trainers created in this process decide retries with `make_policy(failure_config)`.

    Train V2 has no public hook: this swaps the factory its trainer calls
    (`ray.train.v2.api.data_parallel_trainer.create_failure_policy`). False where it is missing:
    then every failure is retried up to `max_failures` and the worker's error record still
    names the error."""
    from ray.train.v2.api import data_parallel_trainer

    if not hasattr(data_parallel_trainer, "create_failure_policy"):
        return False
    data_parallel_trainer.create_failure_policy = make_policy
    return True


def default_failure_policy():
    """Train V2's default policy class and its decision enum (what `install_failure_policy`'s
    policy extends)."""
    from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy, FailureDecision

    return DefaultFailurePolicy, FailureDecision


def quiet_ray_train_reports() -> None:
    """Train V2 logs every `ray.train.report` at INFO on each worker, under a logger named by its
    file path that `LoggingConfig` does not reach; rank 0's progress line says the same."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # its lines stay
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


DATA_SCHEDULING_STEP_S = 0.025  # Ray Data's scheduling loop: at most 40 steps a second


class PacedScheduling(ExecutionCallback or object):
    """A Ray Data execution callback: each step of the scheduling loop starts at least
    `DATA_SCHEDULING_STEP_S` after the one before (see `pace_data_scheduling`)."""

    def __init__(self):
        self._last = 0.0

    def on_execution_step(self, executor) -> None:
        wait = self._last + DATA_SCHEDULING_STEP_S - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        self._last = time.perf_counter()


def pace_data_scheduling(context) -> bool:
    """Pace the scheduling loop of executions under this `DataContext` to one step per
    `DATA_SCHEDULING_STEP_S` (False, and unpaced, when Ray lacks the hook).

    While a read task's outputs wait for the consumer (the steady state of training on a data
    set larger than the object store), Ray Data's `StreamingExecutor` loop finds them ready at
    once in `ray.wait`, may not take them, and goes round again: measured at 0.8 core of this
    machine's 2 in `streaming_split`'s coordinator at 200 videos/s, CPU the training step then
    lacks. Paced, it uses under 0.1 core: 25 ms between steps is far below the time a block
    takes to read or to train on, so throughput stays the same."""
    if ExecutionCallback is None:
        return False
    classes = context.custom_execution_callback_classes
    if PacedScheduling not in classes:
        classes.append(PacedScheduling)
    return True


def train_run_worker_nodes(run_name: str) -> list[str]:
    """Node ids of the workers of the latest attempt of the Train run `run_name`, from Train V2's
    state actor (what the dashboard shows); [] when it is unavailable."""
    try:
        from ray.train.v2._internal.state.state_actor import get_state_actor
        actor = get_state_actor()
        if actor is None:
            return []
        runs = [run for run in ray.get(actor.get_train_runs.remote()).values() if run.name == run_name]
        attempts = ray.get(actor.get_train_run_attempts.remote())
    except (ImportError, AttributeError, ray.exceptions.RayError) as error:
        log.warning("cannot read Ray Train's state to check placement (%s)", error)
        return []
    if not runs:
        return []
    run = max(runs, key=lambda run: run.start_time_ns)
    latest = max(attempts.get(run.id, {}).values(), key=lambda attempt: attempt.start_time_ns, default=None)
    return [worker.node_id for worker in latest.workers] if latest else []


def filter_raylet_messages(drop: Callable[[str], bool]) -> bool:
    """The raylet's messages to the driver (`listen_error_messages`) bypass logging: they call
    `ray._private.worker.print_to_stdstream` by name. Wrap it to drop the lines `drop` picks.
    False where it is missing (the messages then stay)."""
    try:
        from ray._private import worker
    except ImportError:
        return False
    original = getattr(worker, "print_to_stdstream", None)
    if original is None:
        return False
    if getattr(original, "raytrain8m_filtered", False):
        return True

    def filtered(data: dict, ignore_prefix: bool) -> None:
        lines = [line for line in data.get("lines", []) if not drop(line)]
        if lines:
            original({**data, "lines": lines}, ignore_prefix=ignore_prefix)

    filtered.raytrain8m_filtered = True
    filtered.__wrapped__ = original
    worker.print_to_stdstream = filtered
    return True


def without_gradient_sum(optimizer_class: type) -> type:
    """A subclass of a Keras 3 optimizer that applies gradients as given.

    Keras 3's TF backend sums gradients across replicas before applying them (and clips before
    that sum, per replica); our step all-reduces and clips the global gradient itself, as the
    paper's code does. Raises where the hook is missing: a silent second sum would double every
    update."""
    if not hasattr(optimizer_class, KERAS_GRADIENT_SUM):
        raise RuntimeError(f"{optimizer_class.__name__} has no {KERAS_GRADIENT_SUM}: this Keras "
                           f"would sum gradients a second time; see raytrain8m/runtime/compat.py")

    def applied_as_given(self, grads_and_vars):
        return list(grads_and_vars)

    return type(f"PreReduced{optimizer_class.__name__}", (optimizer_class,),
                {KERAS_GRADIENT_SUM: applied_as_given, "__module__": __name__})
