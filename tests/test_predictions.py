"""The float16 prediction store and its chunked combination GAPs, against `metrics.gap`."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from raytrain8m.records.metrics import gap
from raytrain8m.records.predictions import PredictionStore
from raytrain8m.runtime.errors import ConfigError


def _members(rng, videos, classes, count, agreement):
    """Members that agree as trained models do (a shared signal plus their own noise). Each
    member's values are distinct float16 numbers (GAP is defined up to the order of ties, and
    float16 has few values), ranked by its scores."""
    labels = rng.random((videos, classes)) < 0.05
    signal = labels * 2.0 + rng.standard_normal((videos, classes))
    every = np.arange(2**15, dtype=np.uint16).view(np.float16)
    pool = np.unique(every[np.isfinite(every) & (every > 0) & (every < 1)])
    pool = pool[np.linspace(0, len(pool) - 1, videos * classes).astype(int)]
    members = []
    for _ in range(count):
        scores = signal * agreement + rng.standard_normal((videos, classes)) * (1 - agreement)
        values = np.empty(videos * classes, np.float16)
        values[np.argsort(scores, axis=None)] = pool
        members.append(values.reshape(videos, classes).astype(np.float32))
    return members, labels


def _reference(members, indices, weights, labels):
    """`gap` of Σ float32(w)·float16(p), summed in member order."""
    total = np.zeros(members[0].shape, np.float32)
    for index, weight in zip(indices, weights):
        total += np.float32(weight) * members[index].astype(np.float16).astype(np.float32)
    return gap(total, labels)


# (0.2, 24): members that agree little, and few candidates: many videos take the all-classes path
@pytest.mark.parametrize("agreement,candidates", [(0.9, 64), (0.2, 24)])
def test_chunked_combination_gaps_equal_metrics_gap_of_the_float16_predictions(tmp_path, agreement, candidates):
    rng = np.random.default_rng(int(agreement * 10))
    members, labels = _members(rng, videos=40, classes=300, count=4, agreement=agreement)
    store = PredictionStore.from_arrays(tmp_path / "store", members, labels, candidates=candidates)
    assert store.videos == 40 and store.members == ["0", "1", "2", "3"] and store.positives == labels.sum()
    assert (tmp_path / "store" / "0.f16").stat().st_size == 40 * 300 * 2  # float16 on disk
    combinations = [(combo, list(rng.dirichlet(np.ones(len(combo)))))
                    for size in (1, 2, 3, 4) for combo in itertools.combinations(range(4), size)]
    # chunks that do not divide the videos; a memory bound that allows 2 combinations a pass
    got = store.gaps(combinations, chunk_videos=16, memory_mib=2 * 40 * 20 * 5 / 2**20)
    for (indices, weights), value in zip(combinations, got):
        assert value == _reference(members, indices, weights, labels), (indices, weights)


def test_few_classes_make_every_class_a_candidate(tmp_path):
    rng = np.random.default_rng(3)
    members, labels = _members(rng, videos=100, classes=12, count=2, agreement=0.5)
    store = PredictionStore.from_arrays(tmp_path / "store", members, labels)
    assert store.gap([0.3, 0.7]) == _reference(members, [0, 1], [0.3, 0.7], labels)


def test_a_member_predicted_on_other_videos_is_refused(tmp_path):
    rng = np.random.default_rng(4)
    members, labels = _members(rng, videos=40, classes=30, count=1, agreement=0.5)
    store = PredictionStore.from_arrays(tmp_path / "store", members, labels)
    with pytest.raises(ConfigError, match="other videos"):
        with store.writer("late") as writer:
            writer.add(members[0][::-1], labels[::-1], [str(i) for i in range(40)][::-1])
    assert PredictionStore(tmp_path / "store").members == ["0"]
