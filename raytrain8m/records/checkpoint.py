"""Checkpoints: a directory with name-keyed TF tensors, `model.json` and `state.json`.

A checkpoint is what every later stage reads: averaging, fp16 casting, ensembling,
evaluation. Tensors are saved by variable name (`tower/hidden1_weights`) with
TensorFlow's own bundle format, so `tf.train.load_checkpoint` and TF1 `Saver`s
read them too. TensorFlow is imported only where tensors are read or written, so that a process
that only lists checkpoints or reads their JSON (a Tune trial, `--status`) never imports it.
Optimizer slots, when kept for resuming, live under `optimizer/`; a moving
average of the trainable weights (`--ema-decay`) under `ema/`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from raytrain8m.models.config import MODEL_JSON, ModelConfig
from raytrain8m.runtime import atomic
from raytrain8m.runtime.errors import CheckpointError

WEIGHTS = "weights"
STATE_JSON = "state.json"
OPTIMIZER_PREFIX = "optimizer/"
FILES_KEY = "files"  # in state.json: {file name: size} of the checkpoint's other files
EMA_PREFIX = "ema/"
SCORES_KEY = "scores"  # in state.json: {holdout.data_key: metrics} that training scored it on


@dataclasses.dataclass
class Checkpoint:
    path: Path
    config: ModelConfig
    step: int
    state: dict[str, Any]
    tensors: dict[str, np.ndarray]

    @property
    def weights(self) -> dict[str, np.ndarray]:
        """The model's variables only (no optimizer slots)."""
        return {name: value for name, value in self.tensors.items()
                if not name.startswith((OPTIMIZER_PREFIX, EMA_PREFIX))}

    @property
    def ema_weights(self) -> dict[str, np.ndarray] | None:
        """The model's variables with the trainable ones replaced by their moving average
        (batch-norm moving statistics as trained); None if the run kept no average."""
        averages = {name[len(EMA_PREFIX):]: value for name, value in self.tensors.items()
                    if name.startswith(EMA_PREFIX)}
        if not averages:
            return None
        return {name: averages.get(name, value) for name, value in self.weights.items()}


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def save_checkpoint(directory: str | os.PathLike, config: ModelConfig,
                    tensors: Mapping[str, Any], step: int, state: Mapping[str, Any] | None = None) -> Path:
    """Write a checkpoint directory atomically (a temporary sibling renamed when complete)."""
    from raytrain8m.runtime.lazy import tensorflow as tf

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with atomic.staged_dir(directory) as staging:
        names = sorted(tensors)
        tf.raw_ops.SaveV2(prefix=str(staging / WEIGHTS), tensor_names=names,
                          shape_and_slices=[""] * len(names),
                          tensors=[tf.convert_to_tensor(tensors[name]) for name in names])
        (staging / MODEL_JSON).write_text(config.to_json() + "\n")
        # state.json lists the other files' sizes: a copy (Ray Train persists checkpoints by
        # copying files, not renaming a directory) is complete only when they all match.
        files = {path.name: path.stat().st_size for path in sorted(staging.iterdir())}
        _write_json(staging / STATE_JSON, {"step": int(step), **dict(state or {}), FILES_KEY: files})
    return directory


def recorded_score(directory: str | os.PathLike, key: str) -> dict[str, float] | None:
    """The metrics training recorded in this checkpoint's state.json (`SCORES_KEY`) for the data
    `key` names (`holdout.data_key`), or None."""
    score = read_state(directory).get(SCORES_KEY, {}).get(key)
    return dict(score) if isinstance(score, dict) and "gap" in score else None


def read_config(directory: str | os.PathLike) -> ModelConfig:
    path = Path(directory) / MODEL_JSON
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {MODEL_JSON}; not a raytrain8m checkpoint")
    return ModelConfig.from_json(path.read_text(), source=str(path))


def read_state(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / STATE_JSON
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {STATE_JSON}; not a raytrain8m checkpoint")
    return json.loads(path.read_text())


def load_checkpoint(directory: str | os.PathLike, weights_only: bool = False) -> Checkpoint:
    """Read a checkpoint directory; `weights_only` skips optimizer slots."""
    from raytrain8m.runtime.lazy import tensorflow as tf

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory does not exist")
    config, state = read_config(directory), read_state(directory)
    try:
        reader = tf.train.load_checkpoint(str(directory / WEIGHTS))
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as error:
        raise CheckpointError(f"{directory}: cannot read weights ({error})") from error
    tensors = {name: reader.get_tensor(name) for name in sorted(reader.get_variable_to_shape_map())
               if not (weights_only and name.startswith(OPTIMIZER_PREFIX))}
    return Checkpoint(directory, config, int(state["step"]), state, tensors)


def check_same_model(directory: str | os.PathLike, config: ModelConfig) -> None:
    """Refuse to resume into a checkpoint of a different model, naming the differing keys."""
    existing = read_config(directory)
    differences = existing.differences(config)
    if differences:
        raise CheckpointError(f"{directory} holds a different model: " + "; ".join(differences))


def is_checkpoint(directory: str | os.PathLike) -> bool:
    """Is `directory` a complete checkpoint (every file there, at the size state.json lists)?"""
    directory = Path(directory)
    if not ((directory / MODEL_JSON).is_file() and (directory / STATE_JSON).is_file()
            and (directory / f"{WEIGHTS}.index").is_file()):
        return False
    try:
        state = json.loads((directory / STATE_JSON).read_text())
    except (json.JSONDecodeError, OSError):  # still being copied
        return False
    files = state.get(FILES_KEY)
    if not isinstance(files, dict):  # written before state.json listed the files
        return "step" in state
    for name, size in files.items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return "step" in state


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Every complete checkpoint under `root` (recursively), ordered by step."""
    root = Path(root)
    if not root.exists():
        raise CheckpointError(f"{root}: no such directory")
    found = [path.parent for path in root.rglob(STATE_JSON)
             if not path.parent.name.startswith(".") and is_checkpoint(path.parent)]
    return sorted(found, key=lambda path: (read_state(path)["step"], str(path)))
