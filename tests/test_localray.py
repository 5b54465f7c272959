"""The local Ray policy (raytrain8m/runtime/localray.py): loopback listeners, token auth, a quiet console."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from raytrain8m.runtime import localray
from raytrain8m.runtime.errors import ConfigError

import _ray_helpers

REPO = Path(__file__).resolve().parents[1]


def test_refuses_a_local_ray_without_token_auth(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a local Ray, the one this check guards
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(ConfigError, match="RAY_AUTH_MODE=disabled"):
        localray.check_auth()
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    localray.check_auth()
    monkeypatch.delenv("RAY_AUTH_MODE")
    localray.check_auth()


# `jobs/train.py` run as its door runs it, then whether TensorFlow was loaded (not only named:
# `raytrain8m.runtime.lazy` puts a module not yet executed in sys.modules).
TRAIN_DOOR = """
import runpy, sys
sys.argv = ["train.py", *sys.argv[1:]]
try:
    runpy.run_path({path!r}, run_name="__main__")
except SystemExit as exit:
    print("tensorflow loaded:", "tensorflow.python" in sys.modules, file=sys.stderr)
    sys.exit(exit.code)
"""


def test_a_command_refuses_to_start_ray_with_auth_disabled(tmp_path):
    """Refused at once; and `jobs/train.py`'s own process never loads TensorFlow (its workers
    do), which cost every run's start 4–6 s on 2 cores."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAYTRAIN8M_RUNS": str(tmp_path / "runs"),
           "RAYTRAIN8M_DATA": str(tmp_path / "data"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("RAY_ADDRESS", None)
    door = TRAIN_DOOR.format(path=str(REPO / "jobs" / "train.py"))
    done = subprocess.run([sys.executable, "-c", door, "--smoke", "--out", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: RAY_AUTH_MODE=disabled" in done.stderr
    assert "Traceback" not in done.stderr
    assert "tensorflow loaded: False" in done.stderr


def test_local_ray_listens_on_loopback_only_with_token_auth(ray_session):
    @ray_session.remote
    def pid() -> int:
        return os.getpid()

    worker = ray_session.get(pid.remote())
    listeners = _ray_helpers.listeners()
    names = set(listeners.values())
    assert {"gcs_server", "raylet"} <= names, listeners  # Ray's own servers were found at all
    assert any(name.startswith("ray::") for name in names), listeners  # and its agents/workers
    assert psutil.pid_exists(worker)
    outside = {key: name for key, name in listeners.items() if not _ray_helpers.is_loopback(key[0])}
    assert not outside, f"listening beyond loopback: {outside}"
    checked = set()
    for process in _ray_helpers.ray_processes():  # token auth is on in every Ray process whose environment
        environment = process.environ()  # is readable (a retitled process's may read empty)
        if environment:
            assert environment.get("RAY_AUTH_MODE") == "token", process.name()
            checked.add(process.name())
    assert {"gcs_server", "raylet"} <= checked
    assert os.environ["RAY_AUTH_MODE"] == "token"


POOL_WARNING = ("[2026-12-03 07:26:38,289 W 4523 4523] (raylet) worker_pool.cc:1796: WARNING: 8 PYTHON worker "
                "processes have been started on node: d6a9 with address: 127.0.0.1, which is 4x the maximum "
                "expected startup concurrency (2).")


def test_the_console_drops_the_raylet_worker_pool_warning_and_keeps_other_lines():
    assert not localray.keep_line("1234", POOL_WARNING)
    assert not localray.keep_line("1234", "WARNING: 12 PYTHON worker processes have been started on node: x")
    assert localray.keep_line("1234", "step 12/24  loss 0.4100  310 examples/s  ETA 4 s")
    assert not localray.keep_line("1234", "WARNING:tensorflow:5 out of the last 5 calls to <function> triggered")
    shutdown = ["Exception ignored in: <function WeakSet.__init__.<locals>._remove at 0x7f>",
                "Traceback (most recent call last):", '  File "_weakrefset.py", line 39, in _remove',
                '  File "ray/_private/worker.py", line 1063, in sigterm_handler',
                "    raise_sys_exit_with_custom_error_message(", "SystemExit: 1"]
    assert localray._drop_exit_tracebacks(["before", *shutdown, "after"]) == ["before", "after"]
    other = ["Traceback (most recent call last):", "ValueError: bad record"]
    assert localray._drop_exit_tracebacks(other) == other


def test_the_run_directory_links_ray_s_session_logs_and_raylet_chatter_is_dropped(ray_session, tmp_path,
                                                                                  capsys):
    from ray._private import worker

    link = localray.link_logs(tmp_path / "run")
    assert link == tmp_path / "run" / localray.LOGS_LINK and link.is_symlink()
    assert (link / "raylet.out").is_file()  # the raylet's own log, among the workers' output
    assert localray.link_logs(tmp_path / "run") == link  # again: replaced, not refused
    if os.environ.get("RAYTRAIN8M_VERBOSE") == "1":
        return  # verbose: everything is shown
    # the raylet's messages to the driver: its worker-pool warning dropped, a failure kept
    worker.print_to_stdstream({"lines": [POOL_WARNING, "a worker died: out of memory"], "pid": "raylet",
                               "is_err": False}, ignore_prefix=False)
    for batch in worker.stdout_deduplicator.flush():
        worker.print_worker_logs(batch, sys.stdout, False)
    out = capsys.readouterr().out
    assert "a worker died" in out and "worker processes have been started" not in out


def test_two_trials_training_lines_print_as_they_come_and_other_lines_are_still_merged(ray_session):
    """Ray's driver merges lines of different workers that differ only in numbers and holds them
    up to 5 s; rank 0's start, progress and validate lines (as `train/loop.py` writes them) pass
    as they come, one per trial, while other repeated lines are still merged."""
    from ray._private import ray_logging

    from raytrain8m.train.config import TrainConfig
    from raytrain8m.train.loop import _progress, _start_line, _validate_line

    config = TrainConfig(max_steps=600)
    lines = {pid: [_start_line(config, 0, 1), _progress(150, config, loss, rate, 0, 0.0),
                   _validate_line(150, {"gap": gap, "hit_at_one": 0.5, "perr": 0.4})]
             for pid, loss, rate, gap in ((101, 4.0979, 1314.0, 0.7719), (102, 3.6064, 1265.0, 0.7611))}
    deduplicator = ray_logging.LogDeduplicator(5, None, None, _timesource=lambda: 0.0)
    deduplicator.allow_re = ray_logging.stdout_deduplicator.allow_re  # what localray.start set
    assert localray.never_deduplicate(localray.PROGRESS_LINES)  # a second call adds nothing
    assert deduplicator.allow_re.pattern.count(localray.PROGRESS_LINES) == 1

    def printed(pid: int, batch_lines: list[str]) -> list[str]:
        batch = {"ip": "127.0.0.1", "pid": pid, "lines": batch_lines, "task_name": "", "actor_name": "RayTrainWorker"}
        return [line for out in deduplicator.deduplicate(batch) for line in out["lines"]]

    assert printed(101, lines[101]) == lines[101] and printed(102, lines[102]) == lines[102]
    assert printed(101, ["a warning from a worker 1"]) == ["a warning from a worker 1"]
    assert printed(102, ["a warning from a worker 2"]) == []  # still merged: "[repeated 2x …]" later
