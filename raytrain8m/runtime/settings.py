"""The one place environment variables are read (documented in the README).

| variable | default | what |
| --- | --- | --- |
| `RAYTRAIN8M_RUNS` | `runs` | where runs write: MLflow's SQLite store, artifacts, training runs |
| `RAYTRAIN8M_DATA` | `data` | where datasets live (`jobs/synth.py` writes here) |
| `MLFLOW_TRACKING_URI` | `sqlite:///<runs>/mlflow.db` | the MLflow store (a server on a cluster) |
| `MLFLOW_EXPERIMENT_NAME` | `raytrain8m` | the experiment runs go to |
| `RAY_ADDRESS` | unset: a local Ray starts in-process (`local`) | the cluster `ray.init()` joins |
| `TF_CPP_MIN_LOG_LEVEL` | `3` in every process (`0` with `--verbose`) | TensorFlow's C++ log level (3 = none) |
| `RAYTRAIN8M_VERBOSE` | unset (`--verbose` sets it) | `1`: TF's and Ray's own logs reach the terminal |
| `RAYTRAIN8M_RAY_DASHBOARD` | unset: no dashboard | `1`: a local Ray starts its dashboard on 127.0.0.1:8265 |
| `RAY_AUTH_MODE` | unset (= `token`) | a local Ray refuses anything but `token` (see `runtime/localray.py`) |

Functions, not constants: tests and Tune trials change the environment after import.
"""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_EXPERIMENT = "raytrain8m"


def runs_dir() -> Path:
    """Absolute root of everything runs write (MLflow store, artifacts, checkpoints)."""
    return Path(os.environ.get("RAYTRAIN8M_RUNS", "runs")).expanduser().absolute()


def data_dir() -> Path:
    return Path(os.environ.get("RAYTRAIN8M_DATA", "data")).expanduser().absolute()


def mlflow_tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else a SQLite file under the runs directory (absolute path)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"sqlite:///{runs_dir() / 'mlflow.db'}"


def mlflow_artifact_root() -> str | None:
    """Artifact location for new experiments on the default local store; None: the server decides."""
    if os.environ.get("MLFLOW_TRACKING_URI", "").strip():
        return None
    return (runs_dir() / "mlartifacts").as_uri()


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or DEFAULT_EXPERIMENT


def ray_address() -> str:
    """`RAY_ADDRESS` (set by `ray job submit` too), else "local": start Ray in-process and never
    join a stray `ray start` cluster that happens to run on this machine."""
    return os.environ.get("RAY_ADDRESS") or "local"


def tf_log_level() -> str:
    """TensorFlow C++ log level for Ray workers: none unless the user (or --verbose) says otherwise."""
    return os.environ.get("TF_CPP_MIN_LOG_LEVEL") or ("0" if verbose() else "3")


def verbose() -> bool:
    """`--verbose` of any command (carried to Ray workers as RAYTRAIN8M_VERBOSE=1)."""
    return os.environ.get("RAYTRAIN8M_VERBOSE", "").strip() not in ("", "0")


NO_STATE_API = "RAYTRAIN8M_NO_STATE_API"  # set by `localray.start` for a local Ray without its dashboard


def state_api() -> bool:
    """Whether Ray's State API is served: not by a local Ray that `localray.start` started
    without its dashboard (it sets NO_STATE_API for the driver and every Ray worker)."""
    return os.environ.get(NO_STATE_API, "").strip() in ("", "0")


def ray_dashboard() -> bool:
    """Whether a local Ray starts its dashboard (on 127.0.0.1 only)."""
    return os.environ.get("RAYTRAIN8M_RAY_DASHBOARD", "").strip() not in ("", "0")
