"""Score a checkpoint (or any predictor) on a labelled split: GAP, Hit@1, PERR, mAP."""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from raytrain8m.data.batches import iter_batches, to_model_inputs
from raytrain8m.data.files import expand
from raytrain8m.data.schema import DataError
from raytrain8m.data.tfrecord import ReadStats
from raytrain8m.models import ModelConfig, build
from raytrain8m.records.checkpoint import Checkpoint, load_checkpoint
from raytrain8m.records.metrics import MetricsAccumulator
from raytrain8m.runtime.lazy import tensorflow as tf

log = logging.getLogger(__name__)

# frames [batch, frames, 1152] float32, num_frames [batch] int32 -> probabilities [batch, V]
Predictor = Callable[[np.ndarray, np.ndarray], np.ndarray]


def model_from_tensors(config: ModelConfig, tensors: Mapping[str, np.ndarray]):
    """An eager model of the config's family (outside any distribution strategy) holding these weights."""
    return load_tensors(build(config, zeros=True), tensors)


def load_tensors(model, tensors: Mapping[str, np.ndarray]):
    """Assign these weights to the model's variables (every one must be given); return the model."""
    for name, variable in model.variables.items():
        variable.assign(tf.cast(tensors[name], variable.dtype))
    return model


def predictor(model) -> Predictor:
    """A compiled inference function (deterministic frame sampling, moving BN statistics)."""
    spec = (tf.TensorSpec([None, None, model.config.feature_size], tf.float32),
            tf.TensorSpec([None], tf.int32))
    forward = tf.function(lambda frames, num_frames: model(frames, num_frames, training=False),
                          input_signature=spec)
    return lambda frames, num_frames: forward(frames, num_frames).numpy()


def load_predictor(path: str | os.PathLike) -> tuple[Predictor, Checkpoint]:
    checkpoint = load_checkpoint(path, weights_only=True)
    return predictor(model_from_tensors(checkpoint.config, checkpoint.tensors)), checkpoint


@dataclasses.dataclass
class Predicted:
    """One batch through a predictor: the videos' ids, probabilities [B, V] and labels [B, V]
    (None when the batch has none, e.g. the test split)."""

    ids: list[str]
    scores: np.ndarray
    labels: np.ndarray | None


def predict_batches(predict: Predictor, data: str | Sequence[str], num_classes: int, batch_size: int = 256,
                    max_batches: int | None = None, skip_corrupt: bool = False, stats: ReadStats | None = None,
                    progress: bool = False, desc: str = "predict", check_labels: bool = True
                    ) -> Iterator[Predicted]:
    """The one prediction loop (evaluation, member predictions, inference): every video of `data`
    through `predict`, batch by batch; memory is one batch. Corrupt records are counted in
    `stats` under `skip_corrupt`, else raise; so is a label outside `num_classes` unless not
    `check_labels` (inference ignores labels)."""
    batches: Iterable = iter_batches(data, batch_size, num_classes=num_classes if check_labels else None,
                                     skip_corrupt=skip_corrupt, stats=stats)
    for index, batch in enumerate(tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False)):
        if max_batches is not None and index >= max_batches:
            break
        frames, num_frames, labels = to_model_inputs(batch, num_classes)
        ids = [str(video_id) if video_id is not None else "" for video_id in batch["id"]]
        yield Predicted(ids, np.asarray(predict(frames, num_frames), np.float32), labels)


def evaluate(predict: Predictor, data: str | Sequence[str], num_classes: int, batch_size: int = 256,
             max_batches: int | None = None, progress: bool = True, desc: str = "evaluate",
             skip_corrupt: bool = False, mean_ap: bool = False) -> dict:
    """Run `predict` over every labelled video of `data` and return the metrics (with
    `skipped_records`: corrupt records left out under `skip_corrupt`). Memory: each video's top
    20; `mean_ap` keeps every prediction for mAP, videos × classes × 4 bytes."""
    expand(data)  # missing or empty files: the error now, before a progress bar
    accumulator = MetricsAccumulator(num_classes, keep_all=mean_ap)
    stats = ReadStats()
    seen = 0
    for batch in predict_batches(predict, data, num_classes, batch_size, max_batches, skip_corrupt, stats,
                                 progress, desc):
        if batch.labels is None:
            raise DataError(str(data), None, "videos without labels: evaluation needs a labelled split "
                                             "(validate*, not test*)")
        accumulator.add(batch.scores, batch.labels)
        seen += len(batch.labels)
    if not seen:
        raise DataError(str(data), None, "no video to evaluate" + (
            f" ({stats.skipped} corrupt records skipped)" if stats.skipped else ""))
    return {**accumulator.result(), "skipped_records": stats.skipped}


def evaluate_checkpoint(path: str | os.PathLike, data: str | Sequence[str], batch_size: int = 256,
                        progress: bool = True, track: bool = False, skip_corrupt: bool = False,
                        mean_ap: bool = False) -> dict:
    """A checkpoint's metrics on `data`; `track` logs them as an MLflow run (stage `evaluate`);
    `mean_ap` adds mAP (it holds every prediction in memory)."""
    predict, checkpoint = load_predictor(path)
    metrics = evaluate(predict, data, checkpoint.config.num_classes, batch_size, progress=progress,
                       desc=f"evaluate {checkpoint.config.name}@{checkpoint.step}", skip_corrupt=skip_corrupt,
                       mean_ap=mean_ap)
    result = {"checkpoint": str(path), "model": checkpoint.config.name, "step": checkpoint.step, **metrics}
    if track:
        from raytrain8m.records import tracking
        tracking.log_run(f"evaluate {checkpoint.config.name}@{checkpoint.step}",
                         {"checkpoint": str(path), "data": str(data), "model": checkpoint.config.name,
                          "step": checkpoint.step},
                         {key: value for key, value in metrics.items() if value is not None}, tags={"stage": "evaluate"})
    return result
