"""Export an ensemble as the competition's MetaGraph and as a TF2 SavedModel, atomically.

Layout of DIR (docs/design.md, "MetaGraph contract"):
  inference_model/inference_model.{meta,index,data-*}  TF1 graph, collections input_batch_raw,
                                                       num_frames, predictions; loadable by the
                                                       starter's inference.py unchanged
  inference_model/model_flags.json, model_flags.json   the keys the starter reads
  saved_model/                                         serving signature (frames, num_frames) → predictions
  ensemble.json                                        members, weights, size, validate GAP
Members (of any family in the registry) live under `member<i>/tower/…`, their big tensors
stored as float16 (paper 2.3 step 2–3) or, with `Member.precision == "int8"`, as uint8 codes
dequantized in the graph (models/storage.py).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from raytrain8m.compose.compress import to_precision
from raytrain8m.models import ModelConfig, create_variables, from_variables, storage
from raytrain8m.records.checkpoint import load_checkpoint
from raytrain8m.runtime import atomic
from raytrain8m.runtime.errors import ConfigError
from raytrain8m.runtime.lazy import tensorflow as tf
from raytrain8m.select.average import model_tensors

if TYPE_CHECKING:
    from raytrain8m.compose.ensemble import Member

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


def _check_replaceable(out: Path) -> None:
    """An existing export at `out` may be replaced; anything else is refused."""
    if out.exists() and not (out / ENSEMBLE_JSON).is_file() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not an ensemble export; refusing to replace it")


def stored_mib(export_dir: str | os.PathLike) -> float:
    """MiB of the variables the export's MetaGraph checkpoint really holds."""
    reader = tf.train.load_checkpoint(str(Path(export_dir) / META_DIR / META_PREFIX))
    dtypes = reader.get_variable_to_dtype_map()
    return sum(int(np.prod(shape)) * dtypes[name].size
               for name, shape in reader.get_variable_to_shape_map().items()) / 2**20


def export_ensemble(members: Sequence["Member"], weights: Sequence[float], out: str | os.PathLike,
                    validate_gap: float | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write the ensemble of `members` (each at its `precision`, fp16 or int8) to `out`, all or nothing."""
    if len(weights) != len(members) or not members:
        raise ConfigError(f"{len(weights)} weights for {len(members)} members")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory")
    configs, tensors = [], []
    for member in members:
        checkpoint = load_checkpoint(member.checkpoint, weights_only=True)
        float32 = dataclasses.replace(checkpoint, config=checkpoint.config.replace(fp16=False, int8=""),
                                      tensors=storage.to_float32(checkpoint.tensors))
        config, values = to_precision(float32.config, model_tensors(float32), member.precision)
        configs.append(config)
        tensors.append(values)
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic.staged_dir(out) as staging:
        write_meta_graph(configs, tensors, weights, staging / META_DIR)
        module = EnsembleModule(configs, tensors, weights)
        tf.saved_model.save(module, str(staging / SAVED_MODEL), signatures={"serving_default": module.serve})
        flags = json.dumps(model_flags(configs, members, weights), indent=2) + "\n"
        (staging / MODEL_FLAGS).write_text(flags)
        (staging / META_DIR / MODEL_FLAGS).write_text(flags)  # the starter reads it next to the graph
        summary = {"model": MODEL_NAME, "members": [m.to_dict() for m in members],
                   "weights": [float(w) for w in weights],
                   "size_mib": round(stored_mib(staging), 3), "precisions": [m.precision for m in members],
                   "validate_gap": validate_gap, "num_classes": configs[0].num_classes, **dict(extra or {})}
        (staging / ENSEMBLE_JSON).write_text(json.dumps(summary, indent=2) + "\n")
        _check_replaceable(out)
    log.info("exported %d-member ensemble to %s in %.1fs", len(members), out, time.monotonic() - started)
    return out
