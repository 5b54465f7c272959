"""Export an ensemble as the competition's MetaGraph and as a TF2 SavedModel, atomically.

Layout of DIR (docs/design.md, "MetaGraph contract"):
  inference_model/inference_model.{meta,index,data-*}  TF1 graph, collections input_batch_raw,
                                                       num_frames, predictions; loadable by the
                                                       starter's inference.py unchanged
  inference_model/model_flags.json, model_flags.json   the keys the starter reads
  saved_model/                                         serving signature (frames, num_frames) → predictions
  ensemble.json                                        members, weights, size, validate GAP
Members (of any family in the registry) live under `member<i>/tower/…`, their big tensors
stored as float16 (paper 2.3 step 2–3).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import tensorflow as tf

from raytrain8m.average import model_tensors
from raytrain8m.checkpoint import load_checkpoint
from raytrain8m.compress import to_fp16
from raytrain8m.errors import ConfigError
from raytrain8m.models import ModelConfig, create_variables, from_variables

if TYPE_CHECKING:
    from raytrain8m.ensemble import Member

log = logging.getLogger(__name__)

META_DIR = "inference_model"
META_PREFIX = "inference_model"
SAVED_MODEL = "saved_model"
ENSEMBLE_JSON = "ensemble.json"
MODEL_FLAGS = "model_flags.json"
MODEL_NAME = "GatedNetVladEnsemble"


def member_scope(index: int) -> str:
    return f"member{index}"


def ensemble_predictions(models: Sequence[Any], weights: Sequence[float], frames: tf.Tensor,
                         num_frames: tf.Tensor) -> tf.Tensor:
    """Σ weight_i × member_i (deterministic frame sampling, moving batch-norm statistics)."""
    total = None
    for model, weight in zip(models, weights):
        term = tf.constant(float(weight), tf.float32) * model(frames, num_frames, training=False)
        total = term if total is None else total + term
    return total


def _assign(variables: dict[str, tf.Variable], tensors: dict[str, np.ndarray]) -> None:
    for name, variable in variables.items():
        variable.assign(tensors[name])


def write_meta_graph(configs: Sequence[ModelConfig], tensors: Sequence[dict[str, np.ndarray]],
                     weights: Sequence[float], directory: Path) -> Path:
    """The TF1 MetaGraph + checkpoint as google/youtube-8m's inference.py loads them."""
    directory.mkdir(parents=True, exist_ok=True)
    prefix = str(directory / META_PREFIX)
    graph = tf.Graph()
    with graph.as_default():
        frames = tf.compat.v1.placeholder(tf.float32, [None, None, configs[0].feature_size], name="input_batch_raw")
        num_frames = tf.compat.v1.placeholder(tf.int32, [None], name="num_frames")
        members = []
        for index, config in enumerate(configs):
            with tf.compat.v1.variable_scope(member_scope(index)):
                members.append(create_variables(config, zeros=True))
        models = [from_variables(config, variables) for config, variables in zip(configs, members)]
        predictions = tf.identity(ensemble_predictions(models, weights, frames, num_frames), name="predictions")
        tf.compat.v1.add_to_collection("input_batch_raw", frames)
        tf.compat.v1.add_to_collection("num_frames", num_frames)
        tf.compat.v1.add_to_collection("predictions", predictions)
        every = [variable for variables in members for variable in variables.values()]
        saver = tf.compat.v1.train.Saver(every, save_relative_paths=True)
        saver.export_meta_graph(prefix + ".meta")
        # Loading ops come after the export so the MetaGraph holds only the model.
        feeds, assigns = {}, []
        for variables, values in zip(members, tensors):
            for name, variable in variables.items():
                placeholder = tf.compat.v1.placeholder(variable.dtype.base_dtype, variable.shape)
                assigns.append(variable.assign(placeholder))
                feeds[placeholder] = values[name]
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(assigns, feed_dict=feeds)
            saver.save(session, prefix, write_meta_graph=False)
    return Path(prefix + ".meta")


class EnsembleModule(tf.Module):
    """The ensemble in eager TF2, for the SavedModel (and `jobs/infer.py`)."""

    def __init__(self, configs: Sequence[ModelConfig], tensors: Sequence[dict[str, np.ndarray]],
                 weights: Sequence[float]):
        super().__init__(name="ensemble")
        self.weights = [float(w) for w in weights]
        models, self.member_variables = [], []
        for index, (config, values) in enumerate(zip(configs, tensors)):
            variables = create_variables(config, zeros=True, prefix=member_scope(index) + "/")
            _assign(variables, values)
            models.append(from_variables(config, variables))
            self.member_variables.append(list(variables.values()))
        self._models = tuple(models)
        spec = (tf.TensorSpec([None, None, configs[0].feature_size], tf.float32, name="frames"),
                tf.TensorSpec([None], tf.int32, name="num_frames"))
        self.serve = tf.function(self._serve, input_signature=spec)

    def _serve(self, frames: tf.Tensor, num_frames: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"predictions": ensemble_predictions(self._models, self.weights, frames, num_frames)}


def model_flags(configs: Sequence[ModelConfig], members: Sequence["Member"], weights: Sequence[float]) -> dict:
    return {
        "model": MODEL_NAME, "feature_names": "rgb,audio",
        "feature_sizes": f"{configs[0].rgb_size},{configs[0].audio_size}", "frame_features": True,
        "label_loss": "CrossEntropyLoss", "num_classes": configs[0].num_classes,
        "ensemble_num": len(configs), "ensemble_wts": list(weights),
        "families": [c.family for c in configs],
        "netvlad_cluster_size": [c.cluster_size for c in configs],
        "netvlad_hidden_size": [c.hidden_size for c in configs],
        "members": [m.letter or m.name for m in members],
    }


def _install(staging: Path, out: Path) -> None:
    """Put `staging` at `out`; an existing export there is replaced, anything else refused."""
    if out.exists():
        if not (out / ENSEMBLE_JSON).is_file() and any(out.iterdir()):
            raise ConfigError(f"{out} exists and is not an ensemble export; refusing to replace it")
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)


def export_ensemble(members: Sequence["Member"], weights: Sequence[float], out: str | os.PathLike,
                    validate_gap: float | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write the ensemble of `members` (fp16 big tensors) to `out`, all or nothing."""
    if len(weights) != len(members) or not members:
        raise ConfigError(f"{len(weights)} weights for {len(members)} members")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory")
    configs, tensors = [], []
    for member in members:
        checkpoint = load_checkpoint(member.checkpoint, weights_only=True)
        config, values = to_fp16(checkpoint.config.replace(fp16=False), model_tensors(checkpoint))
        configs.append(config)
        tensors.append(values)
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        write_meta_graph(configs, tensors, weights, staging / META_DIR)
        module = EnsembleModule(configs, tensors, weights)
        tf.saved_model.save(module, str(staging / SAVED_MODEL), signatures={"serving_default": module.serve})
        flags = json.dumps(model_flags(configs, members, weights), indent=2) + "\n"
        (staging / MODEL_FLAGS).write_text(flags)
        (staging / META_DIR / MODEL_FLAGS).write_text(flags)  # the starter reads it next to the graph
        summary = {"model": MODEL_NAME, "members": [m.to_dict() for m in members],
                   "weights": [float(w) for w in weights],
                   "size_mib": round(sum(m.fp16_mib for m in members), 3),
                   "validate_gap": validate_gap, "num_classes": configs[0].num_classes, **dict(extra or {})}
        (staging / ENSEMBLE_JSON).write_text(json.dumps(summary, indent=2) + "\n")
        _install(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %d-member ensemble to %s in %.1fs", len(members), out, time.monotonic() - started)
    return out
