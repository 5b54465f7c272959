"""The model zoo: the non-inferior trained models, each named by a letter.

The paper kept 18 of 28 models: "if a model has larger size but same or worse score
than another model, we mark it an inferior model". `zoo.json` is what the ensemble
stage reads to turn `YHLS` into checkpoints.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import string
from pathlib import Path
from typing import Any, Iterable

from raytrain8m.errors import ConfigError

log = logging.getLogger(__name__)

LETTERS = string.ascii_uppercase + string.ascii_lowercase  # a–z only past 26 models


@dataclasses.dataclass
class ZooEntry:
    name: str
    cluster_size: int
    hidden_size: int
    num_classes: int
    fp32_mib: float
    fp16_mib: float
    best_single_gap: float
    best_single_checkpoint: str
    checkpoints: list[str] = dataclasses.field(default_factory=list)
    averaged_gap: float | None = None
    averaged_checkpoint: str | None = None
    run_dir: str = ""
    letter: str = ""
    mlflow_run_id: str | None = None
    pinned: bool = False

    @property
    def _averaged_wins(self) -> bool:
        # Averaging usually wins (the paper: +0.0039); early in training it may not.
        return self.averaged_gap is not None and self.averaged_gap >= self.best_single_gap

    @property
    def gap(self) -> float:
        """The model's score: the better of its averaged and best single checkpoint."""
        return self.averaged_gap if self._averaged_wins else self.best_single_gap

    @property
    def checkpoint(self) -> str:
        """The checkpoint that represents this model in an ensemble (the one scoring `gap`)."""
        return (self.averaged_checkpoint or self.best_single_checkpoint) if self._averaged_wins \
            else self.best_single_checkpoint

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def pareto(entries: Iterable[ZooEntry]) -> tuple[list[ZooEntry], list[ZooEntry]]:
    """Split into (kept, eliminated): eliminated = another is no larger and scores strictly better,
    or is strictly smaller and scores at least as well (the paper's "inferior model")."""
    entries = list(entries)
    kept, eliminated = [], []
    for entry in entries:
        inferior = any(
            other is not entry and (
                (other.fp32_mib < entry.fp32_mib and other.gap >= entry.gap)
                or (other.fp32_mib <= entry.fp32_mib and other.gap > entry.gap))
            for other in entries)
        (eliminated if inferior else kept).append(entry)
    return kept, eliminated


def assign_letters(entries: list[ZooEntry]) -> list[ZooEntry]:
    """Sort by decreasing size (then GAP) as Table 1 does, keep pinned letters, fill the rest A, B, …"""
    entries = sorted(entries, key=lambda entry: (-entry.fp32_mib, -entry.gap))
    taken = {entry.letter for entry in entries if entry.pinned and entry.letter}
    free = iter(letter for letter in LETTERS if letter not in taken)
    for entry in entries:
        if not (entry.pinned and entry.letter):
            try:
                entry.letter = next(free)
            except StopIteration:
                raise ConfigError(f"more than {len(LETTERS)} models in the zoo; letters ran out") from None
    return entries


@dataclasses.dataclass
class Zoo:
    models: list[ZooEntry]
    eliminated: list[ZooEntry] = dataclasses.field(default_factory=list)
    path: Path | None = None

    @classmethod
    def build(cls, entries: Iterable[ZooEntry]) -> "Zoo":
        kept, eliminated = pareto(entries)
        return cls(assign_letters(kept), sorted(eliminated, key=lambda entry: -entry.fp32_mib))

    def entry(self, letter: str) -> ZooEntry:
        for entry in self.models:
            if entry.letter == letter:
                return entry
        known = "".join(entry.letter for entry in self.models)
        raise ConfigError(f"unknown zoo letter {letter!r} (zoo {self.path or ''} has {known or 'nothing'})")

    def members(self, letters: str) -> list[ZooEntry]:
        if len(set(letters)) != len(letters):
            raise ConfigError(f"member letters repeat in {letters!r}")
        return [self.entry(letter) for letter in letters]

    def pin(self, letter: str, name: str) -> None:
        """Give model `name` the letter `letter` for good (later rebuilds keep it). No other
        model's letter changes, except the one holding `letter`: it takes `name`'s old letter."""
        if letter not in LETTERS:
            raise ConfigError(f"zoo letters are A–Z (then a–z), got {letter!r}")
        if any(entry.letter == letter and entry.name != name for entry in self.models if entry.pinned):
            raise ConfigError(f"letter {letter} is already pinned to another model")
        matches = [entry for entry in self.models if entry.name == name]
        if not matches:
            raise ConfigError(f"no model {name} in the zoo")
        for holder in self.models:
            if holder.letter == letter and holder is not matches[0]:
                holder.letter = matches[0].letter  # a swap
        matches[0].letter, matches[0].pinned = letter, True

    def to_dict(self) -> dict[str, Any]:
        return {"models": [entry.to_dict() for entry in self.models],
                "eliminated": [entry.to_dict() for entry in self.eliminated]}

    def save(self, path: str | os.PathLike) -> Path:
        """`path` (zoo.json) and, beside it, the table as text (zoo.txt), each written atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for target, text in ((path, json.dumps(self.to_dict(), indent=2)), (path.with_suffix(".txt"), self.table())):
            staging = target.with_name(f".{target.name}.tmp")
            staging.write_text(text + "\n")
            staging.replace(target)
        self.path = path
        return path

    def table(self) -> str:
        """Table 1 of the paper, for this zoo."""
        header = (f"{'model':<14}{'fp32 MiB':>10}{'fp16 MiB':>10}{'compr.':>8}"
                  f"{'avg ckpt GAP':>14}{'best single GAP':>17}")
        rows = [header, "-" * len(header)]
        for entry in self.models:
            averaged = f"{entry.averaged_gap:.4f}" if entry.averaged_gap is not None else "-"
            rows.append(f"{entry.name + ' (' + entry.letter + ')':<14}{entry.fp32_mib:>10.2f}"
                        f"{entry.fp16_mib:>10.2f}{1 - entry.fp16_mib / entry.fp32_mib:>8.1%}"
                        f"{averaged:>14}{entry.best_single_gap:>17.4f}")
        if self.eliminated:
            rows.append("eliminated (inferior): " + ", ".join(entry.name for entry in self.eliminated))
        return "\n".join(rows)


def _entry(values: dict[str, Any], path: Path) -> ZooEntry:
    known = {field.name for field in dataclasses.fields(ZooEntry)}
    try:
        return ZooEntry(**{key: value for key, value in values.items() if key in known})
    except TypeError as error:
        raise ConfigError(f"{path}: bad zoo entry {values.get('name', '?')}: {error}") from error


def load_zoo(path: str | os.PathLike) -> Zoo:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no zoo here; run jobs/sweep.py (or `make sweep`) first")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from error
    return Zoo([_entry(values, path) for values in payload.get("models", [])],
               [_entry(values, path) for values in payload.get("eliminated", [])], path)


def carry_pins(entries: Iterable[ZooEntry], previous: Zoo | None) -> list[ZooEntry]:
    """Give each entry the letter a previous zoo pinned to its model name."""
    pins = {entry.name: entry.letter for entry in (previous.models if previous else []) if entry.pinned}
    entries = list(entries)
    for entry in entries:
        if entry.name in pins:
            entry.letter, entry.pinned = pins[entry.name], True
    return entries


def plot_pareto(zoo: Zoo, path: str | os.PathLike, title: str = "model zoo") -> Path:
    """Size (fp32 MiB) vs GAP: kept models labelled with their letters, eliminated ones greyed."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    kept = sorted(zoo.models, key=lambda entry: entry.fp32_mib)
    axes.plot([e.fp32_mib for e in kept], [e.gap for e in kept], "o-", color="tab:blue",
              label="kept (Pareto front)")
    for entry in kept:
        axes.annotate(f"{entry.letter} {entry.name}", (entry.fp32_mib, entry.gap), fontsize=7,
                      xytext=(4, 4), textcoords="offset points")
    if zoo.eliminated:
        axes.scatter([e.fp32_mib for e in zoo.eliminated], [e.gap for e in zoo.eliminated],
                     color="lightgrey", edgecolors="grey", label="eliminated (inferior)", zorder=1)
        for entry in zoo.eliminated:
            axes.annotate(entry.name, (entry.fp32_mib, entry.gap), fontsize=6, color="grey",
                          xytext=(4, -8), textcoords="offset points")
    axes.set_xlabel("float32 model size (MiB)")
    axes.set_ylabel("validate GAP")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    return path


def build_zoo(run_dirs: Iterable[str | os.PathLike], validate_data: str, out: str | os.PathLike,
              interval: int = 1, average: bool = True, eval_batches: int | None = None,
              parent_run_id: str | None = None, tracking_uri: str | None = None) -> Zoo:
    """Score each trained model on validate (best single checkpoint, then the best average of
    a range when `average`), drop inferior models, letter the rest (keeping letters pinned in
    an existing `out/zoo.json`), write `zoo.json`, `zoo.txt` and `pareto.png`."""
    from raytrain8m import tracking
    from raytrain8m.average import auto_average
    from raytrain8m.checkpoint import list_checkpoints, read_config
    from raytrain8m.evaluate import evaluate_checkpoint
    from raytrain8m.models import size_mib

    out = Path(out)
    entries = []
    for run_dir in map(Path, run_dirs):
        checkpoints = list_checkpoints(run_dir)
        if not checkpoints:
            raise ConfigError(f"{run_dir}: no checkpoints to put in the zoo")
        config = read_config(checkpoints[-1])
        entry = ZooEntry(name=config.name, cluster_size=config.cluster_size, hidden_size=config.hidden_size,
                         num_classes=config.num_classes, fp32_mib=size_mib(config, fp16=False),
                         fp16_mib=size_mib(config, fp16=True), best_single_gap=0.0,
                         best_single_checkpoint="", checkpoints=[str(path) for path in checkpoints],
                         run_dir=str(run_dir), mlflow_run_id=_run_id(run_dir))
        if average and len(checkpoints) >= 2:
            summary = auto_average(checkpoints, validate_data, out / "averaged" / config.name, interval=interval,
                                   max_batches=eval_batches, track=False, progress=False)
            entry.best_single_gap, entry.best_single_checkpoint = summary.best_single_gap, summary.best_single_checkpoint
            entry.averaged_gap, entry.averaged_checkpoint = summary.averaged_gap, summary.out
        else:
            scores = [evaluate_checkpoint(path, validate_data, progress=False)
                      for path in checkpoints[::max(1, interval)]]
            best = max(scores, key=lambda score: score["gap"])
            entry.best_single_gap, entry.best_single_checkpoint = float(best["gap"]), str(best["checkpoint"])
        if entry.mlflow_run_id:
            tracking.RunLogger(entry.mlflow_run_id, tracking_uri).log_metrics(
                {"best_single_gap": entry.best_single_gap,
                 **({"averaged_gap": entry.averaged_gap} if entry.averaged_gap is not None else {})})
            chosen = entry.averaged_checkpoint or entry.best_single_checkpoint
            tracking.log_chosen_checkpoint(entry.mlflow_run_id, chosen,
                                           "averaged" if entry.averaged_checkpoint else "best single", tracking_uri)
        entries.append(entry)
    previous = load_zoo(out / "zoo.json") if (out / "zoo.json").is_file() else None
    zoo = Zoo.build(carry_pins(entries, previous))
    zoo.save(out / "zoo.json")
    plot_pareto(zoo, out / "pareto.png", title=f"model zoo ({len(zoo.models)} kept, "
                                               f"{len(zoo.eliminated)} eliminated)")
    if parent_run_id:
        from mlflow.exceptions import MlflowException

        mlflow_client = tracking.client(tracking_uri)
        for name in ("zoo.json", "zoo.txt", "pareto.png"):
            try:
                mlflow_client.log_artifact(parent_run_id, str(out / name), "zoo")
            except (MlflowException, OSError) as error:  # the zoo is built; tracking is a copy
                log.warning("MLflow: could not log %s (%s)", name, error)
        tracking.RunLogger(parent_run_id, tracking_uri).log_metrics(
            {"zoo_models": len(zoo.models), "zoo_eliminated": len(zoo.eliminated)})
    return zoo


def _run_id(run_dir: Path) -> str | None:
    """The MLflow run `fit` recorded for a run directory (train.MLFLOW_JSON), if any."""
    record = run_dir / "mlflow.json"
    return json.loads(record.read_text()).get("run_id") if record.is_file() else None
