"""One training step under MultiWorkerMirroredStrategy, weights and Adam moments saved as .npz
(tests/test_trainloop.py runs it as 1 worker on the whole batch and as 2 workers on halves).

    python tests/_one_step.py OUT.npz NUM_WORKERS RANK      # TF_CONFIG set for 2 workers
"""
from __future__ import annotations

import sys

import numpy as np
import tensorflow as tf

from raytrain8m.models import MODELS, ModelConfig
from raytrain8m.train.config import TrainConfig
from raytrain8m.train.loop import make_optimizer, make_train_step, snapshot

GLOBAL_BATCH, FRAMES, CLASSES = 16, 6, 20


def main(out: str, num_workers: int, rank: int) -> None:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    # clip_norm out of the way: clipping a doubled gradient back to norm 1 would hide it.
    config = TrainConfig(model=ModelConfig(family="baseline", num_classes=CLASSES, iterations=FRAMES),
                         batch_size=GLOBAL_BATCH // num_workers, num_workers=num_workers,
                         max_frames=FRAMES, learning_rate=1e-2, clip_norm=1e9, decay_examples=10**9)
    with strategy.scope():
        model = MODELS[config.model.model](config.model, seed=0)
        optimizer = make_optimizer(config)
        optimizer.build([variable for variable in model.variables.values() if variable.trainable])
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (GLOBAL_BATCH, FRAMES, config.model.feature_size), dtype=np.uint8)
    num_frames = rng.integers(1, FRAMES + 1, GLOBAL_BATCH).astype(np.int32)
    labels = (rng.random((GLOBAL_BATCH, CLASSES)) < 0.2).astype(np.uint8)
    mine = slice(rank * config.batch_size, (rank + 1) * config.batch_size)
    step = make_train_step(model, optimizer, strategy, config)
    step(frames[mine], num_frames[mine], labels[mine])
    np.savez(out, **snapshot(model, optimizer))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
