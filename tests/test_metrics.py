"""GAP, Hit@1, PERR and mAP against hand-worked cases and the official algorithm."""
from __future__ import annotations

import numpy as np
import pytest

from raytrain8m.records.metrics import MetricsAccumulator, gap, hit_at_one, mean_ap, perr

PREDICTIONS = np.array([[0.9, 0.8, 0.1],
                        [0.7, 0.2, 0.6]])
LABELS = np.array([[1, 0, 1],
                   [0, 0, 1]])


def official_gap(predictions, labels, top_k=20):
    """The starter's eval_util.calculate_gap + AveragePrecisionCalculator.ap_at_n, as loops."""
    pooled = []
    for row, truth in zip(predictions, labels):
        for c in np.argsort(-row, kind="stable")[:top_k]:
            pooled.append((row[c], truth[c]))
    pooled.sort(key=lambda item: -item[0])
    positives = int(np.sum(labels))
    ap, hits = 0.0, 0
    for i, (_, truth) in enumerate(pooled):
        if truth > 0:
            hits += 1
            ap += hits / (i + 1) / positives
    return ap


def test_gap_hand_computed_top2_pools_videos_and_counts_unreached_labels():
    # top-2 per video: v0 (0.9 hit, 0.8 miss), v1 (0.7 miss, 0.6 hit); v0's label 2 (0.1) falls
    # outside its top 2 but still counts: 3 positives. Pooled ranking 0.9 H, 0.8, 0.7, 0.6 H:
    # AP = (1/1 + 2/4) / 3 = 0.5
    assert gap(PREDICTIONS, LABELS, top_k=2) == pytest.approx(0.5)
    # top-3: 0.9 H, 0.8, 0.7, 0.6 H, 0.2, 0.1 H -> (1/1 + 2/4 + 3/6) / 3 = 2/3
    assert gap(PREDICTIONS, LABELS, top_k=3) == pytest.approx(2 / 3)


def test_gap_is_one_when_every_label_ranks_above_every_non_label_and_zero_without_hits():
    labels = np.array([[1, 1, 0, 0], [0, 0, 1, 0]])
    assert gap(labels * 0.5 + 0.1, labels) == pytest.approx(1.0)
    assert gap(np.array([[0.0, 0.0, 1.0, 0.9], [1.0, 0.5, 0.0, 0.2]]), labels, top_k=2) == 0.0


def test_hit_at_one_perr_and_map_hand_computed():
    # argmax: v0 -> 0 (label), v1 -> 0 (not a label): 1/2
    assert hit_at_one(PREDICTIONS, LABELS) == pytest.approx(0.5)
    # v0: 2 labels, top-2 {0, 1} holds 1 -> 1/2; v1: 1 label, top-1 {0} holds 0 -> 0; mean 0.25
    assert perr(PREDICTIONS, LABELS) == pytest.approx(0.25)
    # class 0: only v0, ranked first -> 1; class 1: no positives, left out;
    # class 2: v1 (0.6) then v0 (0.1), both labels -> 1; mean 1.0. Then swap class 0's scores:
    # v1 (0.9, miss) before v0 (0.7, hit) -> 1/2; mean (1/2 + 1) / 2 = 0.75
    assert mean_ap(PREDICTIONS, LABELS) == pytest.approx(1.0)
    swapped = PREDICTIONS.copy()
    swapped[:, 0] = [0.7, 0.9]
    assert mean_ap(swapped, LABELS) == pytest.approx(0.75)


def test_gap_equals_official_algorithm_on_random_data():
    rng = np.random.default_rng(1)
    predictions = rng.random((50, 40))
    labels = (rng.random((50, 40)) < 0.08).astype(np.int64)
    assert gap(predictions, labels) == pytest.approx(official_gap(predictions, labels), abs=1e-12)
    assert gap(predictions, labels, top_k=5) == pytest.approx(
        official_gap(predictions, labels, top_k=5), abs=1e-12)


def test_accumulator_over_batches_equals_one_shot_exactly():
    rng = np.random.default_rng(2)
    predictions = rng.random((97, 30)).astype(np.float32)
    labels = (rng.random((97, 30)) < 0.1).astype(np.float32)
    accumulator = MetricsAccumulator(num_classes=30, keep_all=True)  # mAP is opt-in
    for begin in range(0, 97, 16):
        accumulator.add(predictions[begin:begin + 16], labels[begin:begin + 16])
    result = accumulator.result()
    assert result["examples"] == 97
    assert result["gap"] == gap(predictions, labels)
    assert result["hit_at_one"] == pytest.approx(hit_at_one(predictions, labels))
    assert result["perr"] == pytest.approx(perr(predictions, labels))
    assert result["map"] == pytest.approx(mean_ap(predictions, labels))


@pytest.mark.parametrize("seed", range(6))
def test_streaming_metrics_keep_only_top_k_and_equal_the_one_shot_ones_exactly(seed):
    """The default accumulator holds O(videos × top_k): no predictions kept, mAP None; GAP is
    bit-equal to `gap` for float16/32/64 batches of random sizes, PERR also past top_k labels."""
    rng = np.random.default_rng(seed)
    videos, classes = int(rng.integers(40, 300)), int(rng.integers(25, 120))
    dtype = [np.float16, np.float32, np.float64][seed % 3]
    predictions = rng.permutation(videos * classes).reshape(videos, classes)  # no ties
    predictions = (predictions / (videos * classes)).astype(dtype)
    if dtype == np.float16:  # distinct float16 values: a random ranking over fewer classes
        predictions = np.argsort(rng.random((videos, classes)), axis=1).astype(np.float16) / 1024
    labels = (rng.random((videos, classes)) < rng.uniform(0.02, 0.3)).astype(np.int8)
    labels[0, :22] = 1  # more labels than top_k: PERR's slow path
    accumulator = MetricsAccumulator(num_classes=classes)
    begin = 0
    while begin < videos:
        size = int(rng.integers(1, 64))
        accumulator.add(predictions[begin:begin + size], labels[begin:begin + size])
        begin += size
    result = accumulator.result()
    assert accumulator._all == [] and result["map"] is None
    assert sum(len(c) for c in accumulator._confidence) == videos * min(20, classes)
    assert result["gap"] == gap(predictions, labels)
    assert result["gap"] == pytest.approx(official_gap(predictions.astype(np.float64), labels), abs=1e-12)
    assert result["hit_at_one"] == pytest.approx(hit_at_one(predictions, labels), abs=1e-12)
    assert result["perr"] == pytest.approx(perr(predictions, labels), abs=1e-12)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        gap(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError):
        MetricsAccumulator(num_classes=4).add(np.zeros((2, 3)), np.zeros((2, 3)))
