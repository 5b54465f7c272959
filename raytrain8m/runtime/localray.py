"""One way every command starts or joins Ray: loopback by default, token auth always, quiet.

- `RAY_ADDRESS` set (a cluster, or `ray job submit`): join it; its token auth and security
  notes (cluster/README.md) stand.
- Otherwise a local Ray starts in-process. Every Ray listener (GCS, raylet, workers' and
  drivers' gRPC servers, dashboard agent, runtime-env agent) binds 127.0.0.1: Ray derives each
  bind address from the node IP, and resolves the node IP to the loopback address only when
  `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (read at import, by every Ray process; `_node_ip_address`
  alone is resolved back to the machine's address). It is in this process's environment only
  while Ray's processes start, so a later multi-node `ray start` from here does not inherit it. The dashboard stays off unless
  `RAYTRAIN8M_RAY_DASHBOARD=1` (then on 127.0.0.1:8265). Token auth is required: a local Ray
  refuses to start with `RAY_AUTH_MODE` other than `token` (unset means token, as in Ray 2.60).
- Every Ray process gets `console_env()`: TensorFlow's C++ start-up banner and CUDA probes off,
  Ray's own INFO/WARNING chatter not forwarded; `--verbose` (`RAYTRAIN8M_VERBOSE=1`) keeps
  them. The full logs stay in Ray's session directory (`/tmp/ray/session_<time>/logs`); each
  run directory links to it as `ray_logs` (`link_logs`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from raytrain8m.runtime import atomic, settings
from raytrain8m.runtime.errors import ConfigError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
AUTH_MODE = "RAY_AUTH_MODE"
# Ray (ray/_private/ray_constants.py) resolves a node's IP to loopback when this is off.
CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


# Ray's own actors: their output is Ray's business (it stays in the session's log files).
RAY_INTERNAL_SOURCES = frozenset({
    "TrainController", "PlacementGroupCleaner", "TrainStateActor", "SplitCoordinator", "DatasetManager",
    "PreemptionWatcher", "AutoscalingRequester", "_StatsActor", "StatsActor", "raylet", "autoscaler",
})
# Lines that are TF's or Ray's start-up chatter whatever process prints them.
NOISE = re.compile("|".join([
    r"^[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\]",     # TF / absl / Ray C++ log lines
    r"^\[[\d-]+ [\d:,]+ [IWEF] \d+ \d+\]",       # Ray core_worker.cc lines
    r"All log messages before absl::InitializeLog",
    r"^To enable the following instructions",
    r"Warning: |^\s+warnings\.warn\(|^\s+self\.\w+ = \w+$",  # Python warnings and their source line
    r"Progress bars disabled",
    # the raylet's "N PYTHON worker processes have been started on node ..." (its error channel)
    r"worker processes have been started on node",
    r"^(WARNING|INFO):tensorflow:",               # TF's Python logger in a worker (retracing notes)
]))
# A Ray worker SIGTERMed at shutdown: "Exception ignored in: …", its traceback, "SystemExit: 1".
EXIT_NOISE = ("sigterm_handler", "raise_sys_exit_with_custom_error_message")
LOGS_LINK = "ray_logs"  # in a run directory: a link to the Ray session's log directory


def console_env(verbose: bool | None = None) -> dict[str, str]:
    """Environment for every process (driver and Ray workers): quiet unless verbose.

    TF_CPP_MIN_LOG_LEVEL: the user's own value wins; else 3 (TF's C++ logs off: the oneDNN and
    CPU-feature banner, cudart and cuInit probes, some of which log at ERROR)."""
    verbose = settings.verbose() if verbose is None else verbose
    env = {"TF_CPP_MIN_LOG_LEVEL": settings.tf_log_level() if not verbose else
           os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")}
    if verbose:
        env["RAYTRAIN8M_VERBOSE"] = "1"
    else:
        env["PYTHONWARNINGS"] = os.environ.get("PYTHONWARNINGS", "ignore")  # TF, Keras, Ray deprecations
    return env


def quiet_process(verbose: bool | None = None) -> None:
    """Apply `console_env` to this process (call it before TensorFlow or Ray is imported), and
    when quiet, Tune's and MLflow's own banners too."""
    verbose = settings.verbose() if verbose is None else verbose
    os.environ.update(console_env(verbose))
    if not verbose:
        import warnings
        warnings.filterwarnings("ignore")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's legacy reporter is silent at verbose=0
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # "Creating initial MLflow database tables"
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("tensorflow").setLevel(logging.ERROR)  # e.g. tf.function retracing notes
        logging.getLogger("absl").setLevel(logging.WARNING)  # SavedModel export's renaming notes


def _quiet_ray_loggers() -> None:
    """Ray's driver-side loggers (raylet warnings relayed to the driver, Ray Data's per-run
    "execution finished" lines): errors only at default verbosity."""
    for name in ("ray", "ray.data", "ray._private.worker", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.ERROR)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with the process's stderr closed: TF 2.21 writes its cudart/CPU-feature
    banner through absl before any log level applies. An import error is still raised.
    (`raytrain8m.runtime.lazy` may hold TensorFlow not yet loaded: reading an attribute loads it here.)"""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            from raytrain8m.runtime.lazy import tensorflow
            tensorflow.__version__  # noqa: B018
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def keep_line(source: str, line: str) -> bool:
    """Whether a Ray worker's output line reaches the terminal at default verbosity."""
    return source not in RAY_INTERNAL_SOURCES and not NOISE.search(line)


def _filter_forwarded_logs() -> None:
    """Ray forwards every worker's stdout/stderr to the driver; keep ours, drop Ray's and TF's."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    printer = next((handler for name, handler in dispatcher.handlers if name == "ray_print_logs"), None)
    if printer is None:
        return

    def filtered(data: dict) -> None:
        source = data.get("actor_name") or data.get("task_name") or str(data.get("pid", ""))
        lines = [line for line in _drop_exit_tracebacks(data.get("lines", [])) if keep_line(source, line)]
        if lines:
            printer({**data, "lines": lines})

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", filtered)


def never_deduplicate(pattern: str) -> bool:
    """Print the forwarded lines that match `pattern` as they come. Ray's driver otherwise
    merges lines from different workers that differ only in their numbers ("[repeated 2x
    across cluster]") and holds each such line up to 5 s: two trials' progress lines showed as
    one, and a trial's last lines came after the command's summary. False where Ray's
    deduplicators (private, as the filters above) are missing: lines are then merged as before."""
    try:
        from ray._private import ray_logging
        deduplicators = (ray_logging.stdout_deduplicator, ray_logging.stderr_deduplicator)
    except (ImportError, AttributeError):
        return False
    for deduplicator in deduplicators:
        if not hasattr(deduplicator, "allow_re"):
            return False
        allowed = deduplicator.allow_re
        if allowed is None or pattern not in allowed.pattern:
            deduplicator.allow_re = re.compile(pattern if allowed is None else f"{allowed.pattern}|{pattern}")
    return True


def _drop_exit_tracebacks(lines: list[str]) -> list[str]:
    """Leave out the "Exception ignored in … SystemExit" block a worker prints when Ray
    SIGTERMs it at shutdown (one forwarded batch); any other traceback stays."""
    if not any(marker in line for line in lines for marker in EXIT_NOISE):
        return lines
    kept, block = [], None
    for line in lines:
        if line.startswith("Exception ignored in"):
            kept += block or []
            block = [line]
        elif block is not None:
            block.append(line)
            if line.startswith("SystemExit"):
                if not any(marker in held for held in block for marker in EXIT_NOISE):
                    kept += block
                block = None
        else:
            kept.append(line)
    return kept + (block or [])


def _filter_error_channel() -> None:
    """Drop the raylet's known chatter (the worker-pool size warning) from the messages it sends
    the driver; keep every other message: those report real failures."""
    from raytrain8m.runtime import compat

    compat.filter_raylet_messages(lambda line: bool(NOISE.search(line)))


def session_logs() -> Path | None:
    """The log directory of the Ray session this process belongs to, if Ray is up and local to it."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        from ray._private import worker

        return Path(worker.global_worker.node.get_logs_dir_path())
    except Exception:  # a Ray client connection, or a Ray without these internals: nothing to link
        return None


def link_logs(run_dir: str | os.PathLike) -> Path | None:
    """Make `run_dir/ray_logs` a link to this Ray session's log directory (workers' stdout and
    stderr, raylet, GCS): the full logs of a run that the console shows only the gist of. Where
    a link cannot be made, `run_dir/ray_logs.txt` names the directory. Returns what it wrote."""
    logs = session_logs()
    if logs is None:
        return None
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        link = run_dir / LOGS_LINK
        atomic.symlink(link, logs, target_is_directory=True)
        return link
    except OSError:
        try:
            note = run_dir / f"{LOGS_LINK}.txt"
            atomic.write_text(note, f"{logs}\n")
            return note
        except OSError as error:
            log.debug("could not record Ray's log directory in %s (%s)", run_dir, error)
            return None


def check_auth() -> None:
    """Refuse to start a local Ray without token auth (a Ray worker runs any code it is sent).
    Joining RAY_ADDRESS needs no check here: that cluster's own auth applies."""
    if settings.ray_address() != "local":
        return
    mode = os.environ.get(AUTH_MODE, "").strip().lower()
    if mode not in ("", "token"):
        raise ConfigError(f"{AUTH_MODE}={os.environ[AUTH_MODE]}: raytrain8m starts a local Ray only with token "
                          f"auth; unset {AUTH_MODE} or set it to token (Ray keeps the token in ~/.ray/auth_token)")


def _token_auth() -> None:
    """RAY_AUTH_MODE=token, explicitly: Ray then does not print its "set RAY_AUTH_MODE=disabled to
    opt out" invitation. Ray's C++ config caches the mode at import: refresh it as Ray itself does."""
    os.environ[AUTH_MODE] = "token"
    from ray._raylet import Config
    Config.initialize("")


@contextlib.contextmanager
def _loopback_node():
    """Make this process and the Ray processes started inside the block (GCS, raylet, and the
    workers the raylet starts) resolve the node IP to 127.0.0.1. The switch is in the
    environment only while they start: a later `ray start` of a multi-node cluster from this
    process must not inherit it."""
    from ray._private import ray_constants

    previous = os.environ.get(CLUSTER_SWITCH)
    os.environ[CLUSTER_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False  # read from the environment when Ray was imported
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(CLUSTER_SWITCH, None)
        else:
            os.environ[CLUSTER_SWITCH] = previous


# Training's own lines on rank 0 (`train/loop.py`: start, progress, validation): each trial's
# shown as it comes, however alike two trials' lines are (`never_deduplicate`).
PROGRESS_LINES = r"^(starting|resuming) \S+ at step \d+ of \d+ on |^step \d+(/\d+ \(| +validate gap )"


# A local Ray is one machine that nobody preempts: Ray Train's preemption watcher (an actor, so a
# process start on every run's start-up path) has nothing to watch, and the controller may poll
# its workers more often than a cluster's 2 s default. Set unless the environment sets them.
LOCAL_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


def start(num_cpus: int | None = None, num_gpus: int | None = None, verbose: bool | None = None,
          **init_options: Any) -> bool:
    """Join RAY_ADDRESS or start a local Ray under the policy above; a no-op if Ray is running.
    Returns True when this call started or joined Ray (the caller may shut it down)."""
    verbose = settings.verbose() if verbose is None else verbose
    address = settings.ray_address()
    job_env = set(os.environ)  # on a cluster: what the job's own runtime env already sets
    env = console_env(verbose)
    check_auth()
    import ray

    if ray.is_initialized():
        return False
    if address == "local":
        _token_auth()
    quiet_process(verbose)
    options: dict[str, Any] = {"logging_level": logging.INFO if verbose else logging.ERROR, **init_options}
    if address == "local":
        local_env = {key: value for key, value in LOCAL_TRAIN_ENV.items() if key not in os.environ}
        if not settings.ray_dashboard():  # and so no State API (compat.DataParallelTrainer)
            local_env[settings.NO_STATE_API] = os.environ[settings.NO_STATE_API] = "1"
        else:
            os.environ.pop(settings.NO_STATE_API, None)
        options = {"address": "local", "num_cpus": num_cpus, "num_gpus": num_gpus,
                   "_node_ip_address": LOOPBACK, "include_dashboard": settings.ray_dashboard(),
                   "dashboard_host": LOOPBACK, "runtime_env": {"env_vars": {**local_env, **env}},
                   **options}
    else:
        # Ray refuses a driver runtime env that sets a variable the job's runtime env sets too.
        options = {"address": address,
                   "runtime_env": {"env_vars": {k: v for k, v in env.items() if k not in job_env}}, **options}
    with _loopback_node() if address == "local" else contextlib.nullcontext():
        ray.init(**options)
    never_deduplicate(PROGRESS_LINES)
    if not verbose:
        _filter_forwarded_logs()
        _filter_error_channel()
        _quiet_ray_loggers()
    return True
