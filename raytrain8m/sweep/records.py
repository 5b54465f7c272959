"""A sweep's own files, which resuming and `--status` read instead of Ray Tune's state.

`<out>/sweep.json` holds the plan and the training settings, written before any trial
starts; `<out>/train/<model>/trial.json` is written when that model's trial is complete.
Both are written to a temporary name and renamed, so a reader never sees half a file.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

from raytrain8m.records.checkpoint import list_checkpoints, read_state
from raytrain8m.runtime import atomic
from raytrain8m.runtime.errors import ConfigError
from raytrain8m.sweep.placement import Placement
from raytrain8m.train.config import TrainConfig

SWEEP_JSON = "sweep.json"  # the plan and the parent run, written before any trial starts
TRAIN_DIR = "train"        # one Ray Train run directory per model: <out>/train/K32-H1024/
TRIAL_JSON = "trial.json"  # in a model's run directory once its trial is complete: what it reported


@dataclasses.dataclass
class TrialOutcome:
    model: str
    status: str               # TERMINATED (done) or ERROR
    gpu_type: str
    batch_size: int
    metrics: dict[str, Any]
    run_dir: str
    mlflow_run_id: str | None
    error: str | None = None


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, payload)


def read_sweep(out: Path, doing: str = "no sweep here") -> dict[str, Any]:
    """`out/sweep.json`; a missing one is a ConfigError that starts with `doing`."""
    record = out / SWEEP_JSON
    if not record.is_file():
        raise ConfigError(f"{out}: {doing} (no {SWEEP_JSON})")
    return json.loads(record.read_text())


def scoring_data(out: Path) -> tuple[str | list[str], list[str] | None, str | None]:
    """What the stages after training score on, from the sweep's split: (the files choices are
    made on, the files reported GAPs are measured on or None, what the split is)."""
    from raytrain8m.records.holdout import Split

    saved = read_sweep(Path(out))
    values = saved["sweep"].get("split")
    if not values:
        return saved.get("validate_data"), None, None
    split = Split.from_dict(values)
    return list(split.choose), list(split.report) if split.separate else None, split.describe()


def finished_trial(run_dir: Path) -> TrialOutcome | None:
    """The outcome a complete trial recorded in its run directory, or None."""
    path = run_dir / TRIAL_JSON
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    return TrialOutcome(model=run_dir.name, status="TERMINATED", gpu_type=report["gpu_type"],
                        batch_size=report["batch_size"], metrics=report, run_dir=report["run_dir"],
                        mlflow_run_id=report.get("mlflow_run_id"))


def finished_trials(saved: dict[str, Any]) -> list[TrialOutcome]:
    """The trials of a sweep (its `read_sweep` record) that wrote their trial.json, in plan order."""
    run_dirs = [Path(saved["sweep"]["train_out"]) / placement["model"] for placement in saved["placements"]]
    return [outcome for outcome in map(finished_trial, run_dirs) if outcome]


@dataclasses.dataclass(frozen=True)
class TrialStatus:
    model: str
    gpu_type: str
    batch_size: int
    step: int             # of its latest checkpoint (0: none yet)
    max_steps: int
    done: bool            # its trial.json is written
    gap: float | None     # the GAP it reported when done (its last evaluation)


def sweep_status(out: str | Path) -> list[TrialStatus]:
    """Where each model of the sweep in `out` stands, from its files only (running or not)."""
    saved = read_sweep(Path(out).expanduser().absolute())
    max_steps = int(saved.get("train", {}).get("max_steps", TrainConfig().max_steps))
    statuses = []
    for placement in map(Placement.from_dict, saved["placements"]):
        run_dir = Path(saved["sweep"]["train_out"]) / placement.model
        finished = finished_trial(run_dir)
        checkpoints = list_checkpoints(run_dir) if run_dir.is_dir() else []
        gap = finished.metrics.get("gap") if finished else None
        statuses.append(TrialStatus(placement.model, placement.gpu_type, placement.batch_size,
                                    read_state(checkpoints[-1])["step"] if checkpoints else 0, max_steps,
                                    finished is not None, gap))
    return statuses


def status_table(statuses: Sequence[TrialStatus]) -> str:
    """`jobs/sweep.py --status`: a row per model, then the totals."""
    header = f"{'model':<12}{'GPU type':>10}{'batch':>7}{'checkpoint step':>18}   {'state':<12}{'GAP':>8}"
    rows = [header, "-" * len(header)]
    for status in statuses:
        state = "done" if status.done else ("started" if status.step else "not started")
        gap = f"{status.gap:.4f}" if status.gap is not None else "-"
        rows.append(f"{status.model:<12}{status.gpu_type:>10}{status.batch_size:>7}"
                    f"{f'{status.step}/{status.max_steps}':>18}   {state:<12}{gap:>8}")
    done = sum(status.done for status in statuses)
    steps = sum(min(status.step, status.max_steps) for status in statuses)
    total = sum(status.max_steps for status in statuses)
    rows.append(f"{done}/{len(statuses)} trials done; {steps}/{total} checkpointed steps "
                f"({100 * steps / max(total, 1):.0f}%)")
    return "\n".join(rows)
