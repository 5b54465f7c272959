"""Helpers shared by the average/ensemble/export/infer tests: tiny checkpoints, trained members, a zoo."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from raytrain8m.checkpoint import save_checkpoint
from raytrain8m.models import ModelConfig, create_variables, cross_entropy, from_variables, size_mib

NUM_CLASSES = 20
ITERATIONS = 10


def tiny_config(cluster_size: int = 4, hidden_size: int = 16, family: str = "gated_netvlad") -> ModelConfig:
    return ModelConfig(cluster_size=cluster_size, hidden_size=hidden_size, num_classes=NUM_CLASSES,
                       iterations=ITERATIONS, family=family)


def random_checkpoint(directory: Path, config: ModelConfig, seed: int, step: int,
                      extra: dict | None = None) -> Path:
    """A checkpoint of freshly initialised variables (different seeds give different weights)."""
    tensors = {name: variable.numpy() for name, variable in create_variables(config, seed=seed).items()}
    tensors.update(extra or {})
    return save_checkpoint(directory, config, tensors, step=step)


def constant_checkpoint(directory: Path, config: ModelConfig, step: int) -> Path:
    """A checkpoint of all-zero variables: it predicts the same probability for every class of every
    video, so adding it to an ensemble (any weight) is a monotone map of the others' scores and
    cannot change their GAP."""
    tensors = {name: variable.numpy() for name, variable in create_variables(config, zeros=True).items()}
    return save_checkpoint(directory, config, tensors, step=step)


@contextlib.contextmanager
def deterministic(seed: int):
    """Seeded Python/numpy/TF random state and deterministic TF ops, restored afterwards (other
    tests of the session keep the default). Frame sampling in training is a stateful random op."""
    from tensorflow.python.framework import config as tf_config  # the public API can only enable it

    was_enabled = tf_config.is_op_determinism_enabled()
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not was_enabled:
            tf_config.disable_op_determinism()


def load_split(data_dir: Path, split: str):
    from raytrain8m.data.batches import iter_batches, to_model_inputs

    frames, num_frames, labels = [], [], []
    for batch in iter_batches(str(data_dir / f"{split}*.tfrecord"), 64, num_classes=NUM_CLASSES):
        f, n, y = to_model_inputs(batch, NUM_CLASSES)
        frames.append(f), num_frames.append(n), labels.append(y)
    width = max(f.shape[1] for f in frames)
    frames = [np.pad(f, ((0, 0), (0, width - f.shape[1]), (0, 0))) for f in frames]
    return np.concatenate(frames), np.concatenate(num_frames), np.concatenate(labels)


def train_member(data_dir: Path, directory: Path, config: ModelConfig, seed: int, steps: int = 300,
                 batch_size: int = 32, learning_rate: float = 3e-3) -> Path:
    """A member that learned something: `steps` Adam steps on the synthetic train split, the same
    weights on every run (seeded, deterministic ops)."""
    with deterministic(seed):
        return _train_member(data_dir, directory, config, seed, steps, batch_size, learning_rate)


def _train_member(data_dir: Path, directory: Path, config: ModelConfig, seed: int, steps: int,
                  batch_size: int, learning_rate: float) -> Path:
    frames, num_frames, labels = load_split(data_dir, "train")
    variables = create_variables(config, seed=seed)
    model = from_variables(config, variables)
    trainable = [v for v in variables.values() if v.trainable]
    optimizer = tf.keras.optimizers.Adam(learning_rate)

    @tf.function
    def step(f, n, y):
        with tf.GradientTape() as tape:
            loss = cross_entropy(model(f, n, training=True), y)
        optimizer.apply_gradients(zip(tape.gradient(loss, trainable), trainable))
        return loss

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        index = rng.integers(0, len(frames), batch_size)
        step(frames[index], num_frames[index], labels[index])
    tensors = {name: variable.numpy() for name, variable in variables.items()}
    tensors["optimizer/iterations"] = np.array(steps, np.int64)
    return save_checkpoint(directory, config, tensors, step=steps)


def trained_members(data_dir: Path, root: Path, steps: int = 300) -> list[Path]:
    """Two differently shaped trained members, made once per session under `root`."""
    specs = [(tiny_config(4, 16), 1), (tiny_config(8, 24), 2)]
    paths = [root / f"member-{config.name}" for config, _ in specs]
    for path, (config, seed) in zip(paths, specs):
        if not (path / "state.json").is_file():
            train_member(data_dir, path, config, seed, steps)
    return paths


def write_zoo(path: Path, checkpoints: list[Path], letters: str, gaps: list[float] | None = None,
              fp16_mib: list[float] | None = None) -> Path:
    """A zoo.json in the sweep's format for the given checkpoints."""
    from raytrain8m.checkpoint import read_config

    models = []
    for index, (checkpoint, letter) in enumerate(zip(checkpoints, letters)):
        config = read_config(checkpoint)
        models.append({
            "letter": letter, "name": config.name, "cluster_size": config.cluster_size,
            "hidden_size": config.hidden_size, "num_classes": config.num_classes,
            "fp32_mib": size_mib(config), "fp16_mib": fp16_mib[index] if fp16_mib else size_mib(config, True),
            "best_single_gap": gaps[index] if gaps else 0.5, "best_single_checkpoint": str(checkpoint),
            "averaged_gap": None, "averaged_checkpoint": None, "checkpoints": [str(checkpoint)],
            "run_dir": str(checkpoint.parent)})
    path.write_text(json.dumps({"models": models, "eliminated": []}, indent=2))
    return path

