"""The paper's split: a few validate files held out for every choice after training.

The paper trained on train + validate except 60 of the 3844 validate files, and made its
choices (checkpoint, averaging range, inferior models, ensemble members and weights) on those
60. Here the held-out files are split once more: choices are made on one half (`choose`)
and the GAP that is reported is measured on the other (`report`), so a reported figure was
not also the target of a choice.

`--holdout auto` (the default) holds out round(60 / 3844 · V) of V validate files, at least 2
(one a half) and at most V: 60 of the full 3844, 2 of a small synthetic set. `--holdout N`
holds out N; `--holdout 0` trains on the train files only and scores on every validate file
(one split for choices and reports, as the reports then say).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

from raytrain8m.runtime import atomic
from raytrain8m.runtime.errors import ConfigError

PAPER_HOLDOUT, PAPER_VALIDATE_FILES = 60, 3844
SPLIT_JSON = "split.json"  # in a run directory and beside a sweep's sweep.json


def holdout_count(holdout: str | int, validate_files: int) -> int:
    """How many of `validate_files` files `--holdout` (auto, 0 or N) holds out."""
    text = str(holdout).strip().lower()
    if text == "auto":
        return min(validate_files, max(2, round(PAPER_HOLDOUT / PAPER_VALIDATE_FILES * validate_files)))
    try:
        count = int(text)
    except ValueError:
        raise ConfigError(f"--holdout must be auto, 0 or a number of validate files, got {holdout!r}") from None
    if not 0 <= count <= validate_files:
        raise ConfigError(f"--holdout {count}: there are {validate_files} validate files")
    return count


@dataclasses.dataclass(frozen=True)
class Split:
    """Which files train, and which score: `choose` for choices, `report` for reported GAPs."""

    holdout: int                 # files held out (0: no holdout, validate scores everything)
    train: tuple[str, ...]       # train files + the validate files not held out
    choose: tuple[str, ...]      # held-out files the choices are made on
    report: tuple[str, ...]      # held-out files the reported GAP is measured on

    @property
    def scoring(self) -> tuple[str, ...]:
        """Every held-out file (what training's own evaluations score)."""
        return tuple(dict.fromkeys(self.choose + self.report))

    @property
    def separate(self) -> bool:
        """Choices and reports are on different files."""
        return not set(self.choose) & set(self.report)

    def describe(self) -> str:
        if not self.holdout:
            return f"no holdout: choices and reported GAPs on the same {len(self.choose)} validate file(s)"
        if not self.separate:
            return f"{self.holdout} held-out validate file: choices and reported GAPs on the same file"
        return (f"{self.holdout} held-out validate files: choices on {len(self.choose)}, "
                f"reported GAPs on the other {len(self.report)}")

    def to_dict(self) -> dict[str, Any]:
        return {"holdout": self.holdout, "train": list(self.train), "choose": list(self.choose),
                "report": list(self.report), "describe": self.describe()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Split":
        return cls(int(values["holdout"]), tuple(values["train"]), tuple(values["choose"]), tuple(values["report"]))

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(path, self.to_dict())
        return path


def data_key(data: str | Sequence[str], max_batches: int | None = None) -> str:
    """What a score was measured on: each file's content identity (size, mtime, a hash of its head
    and tail; `files.file_identity`) and how many batches. A file rewritten since, or another
    file set, gives another key; the same files under other paths give the same one."""
    from raytrain8m.data.files import expand, file_identity

    filesystem, files = expand(data)
    identities = sorted(json.dumps(file_identity(filesystem, path), sort_keys=True) for path in files)
    text = json.dumps({"files": identities, "max_batches": max_batches or None})
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def load_split(path: str | os.PathLike) -> Split | None:
    path = Path(path)
    return Split.from_dict(json.loads(path.read_text())) if path.is_file() else None


def _uri(filesystem, path: str, pattern: str | Sequence[str]) -> str:
    """A path from `files.expand` in the form the readers take (a URI for a remote pattern)."""
    first = pattern if isinstance(pattern, str) else pattern[0]
    if "://" in first:
        return f"{first.split('://', 1)[0]}://{path}"
    return path


def make_split(train_data: str | Sequence[str], validate_data: str | Sequence[str], holdout: str | int = "auto",
               seed: int = 0) -> Split:
    """The split of these globs (the same files on every run: a seeded choice)."""
    from raytrain8m.data.files import expand, split_files

    _, validate = expand(validate_data)
    count = holdout_count(holdout, len(validate))
    if count == 0:
        filesystem, train = expand(train_data)
        _, validate = expand(validate_data)
        scored = tuple(_uri(filesystem, path, validate_data) for path in validate)
        return Split(0, tuple(_uri(filesystem, path, train_data) for path in train), scored, scored)
    split = split_files(train_data, validate_data, count, seed)
    train_files = len(split.train) - (len(validate) - count)  # split.train: train files, then validate ones
    train = [_uri(split.filesystem, path, train_data if index < train_files else validate_data)
             for index, path in enumerate(split.train)]
    held = [_uri(split.filesystem, path, validate_data) for path in split.holdout]
    half = (len(held) + 1) // 2
    choose, report = held[:half], held[half:] or held[:half]
    return Split(count, tuple(train), tuple(choose), tuple(report))
