"""YouTube-8M metrics as the official starter computes them: GAP@20, Hit@1, PERR, mAP.

Ties in confidence are ranked deterministically (video order, then class rank) where the
official code shuffles them with a fixed seed; with continuous scores this never matters.
"""
from __future__ import annotations

import numpy as np


def _as_arrays(predictions, labels) -> tuple[np.ndarray, np.ndarray]:
    # float16/32 stay as they are (a batch of 3862 classes is not copied to float64); the
    # confidences kept are upcast exactly, so every metric equals the float64 computation.
    predictions = np.asarray(predictions)
    if predictions.dtype not in (np.float16, np.float32, np.float64):
        predictions = predictions.astype(np.float64)
    labels = np.asarray(labels)
    if predictions.ndim != 2 or predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must be "
                         "dense [videos, classes] of the same shape")
    return predictions, labels > 0


def top_k_per_video(predictions, labels, top_k: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Each video's `top_k` confidences (most confident first) and whether each is a true label."""
    predictions, labels = _as_arrays(predictions, labels)
    k = min(top_k, predictions.shape[1])
    index = np.argpartition(-predictions, k - 1, axis=1)[:, :k]
    confidence = np.take_along_axis(predictions, index, axis=1)
    order = np.argsort(-confidence, axis=1, kind="stable")
    index = np.take_along_axis(index, order, axis=1)
    return (np.take_along_axis(predictions, index, axis=1).astype(np.float64),
            np.take_along_axis(labels, index, axis=1))


def pooled_ap(confidence: np.ndarray, hits: np.ndarray, positives: int) -> float:
    """AP of pooled (confidence, hit) pairs with recall over `positives` true labels."""
    if positives == 0:
        return 0.0
    order = np.argsort(-confidence, kind="stable")
    hits = hits[order].astype(np.float64)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(np.sum(precision * hits) / positives)


def gap(predictions, labels, top_k: int = 20) -> float:
    """Global Average Precision: each video's top_k predictions pooled, ranked by confidence,
    AP = sum of precision@i * Δrecall, recall over ALL true labels of the set."""
    confidence, hits = top_k_per_video(predictions, labels, top_k)
    return pooled_ap(confidence.ravel(), hits.ravel(), int(np.sum(np.asarray(labels) > 0)))


def hit_at_one(predictions, labels) -> float:
    """Fraction of videos whose most confident class is a true label."""
    predictions, labels = _as_arrays(predictions, labels)
    top = np.argmax(predictions, axis=1)
    return float(np.mean(labels[np.arange(len(top)), top])) if len(top) else 0.0


def _perr_sum(predictions: np.ndarray, labels: np.ndarray, top_hits: np.ndarray | None = None) -> float:
    """Sum over videos of the precision of their top-(#labels) classes. `top_hits` (each video's
    hits of its top_k, most confident first) answers every video with at most top_k labels
    without another pass over its classes."""
    counts = labels.sum(axis=1)
    total = 0.0
    rows = np.flatnonzero(counts)
    if top_hits is not None:
        reach = counts <= top_hits.shape[1]
        fast = rows[reach[rows]]
        cumulative = np.cumsum(top_hits[fast], axis=1)
        total += float(np.sum(cumulative[np.arange(len(fast)), counts[fast] - 1] / counts[fast]))
        rows = rows[~reach[rows]]
    for row in rows:
        count = int(counts[row])
        top = np.argpartition(predictions[row], -count)[-count:]
        total += labels[row, top].sum() / count
    return total


def perr(predictions, labels) -> float:
    """Precision at equal recall rate: per video, precision of its top-(#labels) classes,
    averaged over all videos (unlabelled ones count 0, as in the official code)."""
    predictions, labels = _as_arrays(predictions, labels)
    return _perr_sum(predictions, labels) / len(labels) if len(labels) else 0.0


def mean_ap(predictions, labels) -> float:
    """Mean over classes with at least one true label of each class's AP over all videos."""
    predictions, labels = _as_arrays(predictions, labels)
    order = np.argsort(-predictions, axis=0, kind="stable")
    hits = np.take_along_axis(labels, order, axis=0).astype(np.float64)
    positives = hits.sum(axis=0)
    precision = np.cumsum(hits, axis=0) / np.arange(1, len(hits) + 1)[:, None]
    present = positives > 0
    if not present.any():
        return 0.0
    return float(np.mean((precision * hits).sum(axis=0)[present] / positives[present]))


class MetricsAccumulator:
    """GAP, Hit@1 and PERR over batches in O(videos × top_k) memory; GAP equals `gap` on the
    concatenated batches exactly (each video's top_k is kept). mAP needs every prediction
    ([videos, classes]: 17 GB for YouTube-8M's validate set), so it is opt-in: `keep_all=True`."""

    def __init__(self, num_classes: int, top_k: int = 20, keep_all: bool = False):
        self.num_classes = num_classes
        self.top_k = top_k
        self.keep_all = keep_all
        self._confidence: list[np.ndarray] = []
        self._hits: list[np.ndarray] = []
        self._positives = 0
        self._hit_at_one = 0.0
        self._perr = 0.0
        self._examples = 0
        self._all: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, predictions, labels) -> None:
        predictions, labels = _as_arrays(predictions, labels)
        if predictions.shape[1] != self.num_classes:
            raise ValueError(f"{predictions.shape[1]} classes, expected {self.num_classes}")
        confidence, hits = top_k_per_video(predictions, labels, self.top_k)
        self._confidence.append(confidence.ravel())
        self._hits.append(hits.ravel())
        self._positives += int(labels.sum())
        self._hit_at_one += hit_at_one(predictions, labels) * len(labels)
        self._perr += _perr_sum(predictions, labels, hits)
        self._examples += len(labels)
        if self.keep_all:
            self._all.append((predictions.astype(np.float32), labels))

    def result(self) -> dict:
        """{gap, hit_at_one, perr, map, examples}; map is None unless `keep_all`."""
        if not self._examples:
            return {"gap": 0.0, "hit_at_one": 0.0, "perr": 0.0, "map": None, "examples": 0}
        gap_value = pooled_ap(np.concatenate(self._confidence), np.concatenate(self._hits),
                              self._positives)
        map_value = None
        if self.keep_all:
            map_value = mean_ap(np.concatenate([p for p, _ in self._all]),
                                np.concatenate([l for _, l in self._all]))
        return {"gap": gap_value, "hit_at_one": self._hit_at_one / self._examples,
                "perr": self._perr / self._examples, "map": map_value,
                "examples": self._examples}
