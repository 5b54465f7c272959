"""The model zoo: the non-inferior trained models, each named by a letter.

The paper kept 18 of 28 models: "if a model has larger size but same or worse score
than another model, we mark it an inferior model". `zoo.json` is what the ensemble
stage reads to turn `YHLS` into checkpoints.
"""
from __future__ import annotations

import dataclasses
import json
import os
import string
from pathlib import Path
from typing import Any, Iterable

from raytrain8m.errors import ConfigError

LETTERS = string.ascii_uppercase


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
    def gap(self) -> float:
        """The model's score: its averaged checkpoint's when there is one."""
        return self.averaged_gap if self.averaged_gap is not None else self.best_single_gap

    @property
    def checkpoint(self) -> str:
        """The checkpoint that represents this model in an ensemble."""
        return self.averaged_checkpoint or self.best_single_checkpoint

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
                raise ConfigError("more than 26 models in the zoo; letters ran out") from None
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
        """Give model `name` the letter `letter` for good (later rebuilds keep it)."""
        if any(entry.letter == letter and entry.name != name for entry in self.models if entry.pinned):
            raise ConfigError(f"letter {letter} is already pinned to another model")
        matches = [entry for entry in self.models if entry.name == name]
        if not matches:
            raise ConfigError(f"no model {name} in the zoo")
        matches[0].letter, matches[0].pinned = letter, True
        self.models = assign_letters(self.models)

    def to_dict(self) -> dict[str, Any]:
        return {"models": [entry.to_dict() for entry in self.models],
                "eliminated": [entry.to_dict() for entry in self.eliminated]}

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.tmp")
        staging.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        staging.replace(path)
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
