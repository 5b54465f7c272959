"""A mean-pooled logistic baseline: what Gated NetVLAD must beat when trained equally long.

The mean of each video's first `num_frames` frames (rgb‖audio) → one dense layer → sigmoid,
the starter code's frame-level logistic model. Same call signature and checkpoint format
as `GatedNetVLAD` (name-keyed variables), selected by `ModelConfig(family="baseline")`.
"""
from __future__ import annotations

import math

from raytrain8m.models.config import ModelConfig
from raytrain8m.models.layers import Forward, VariableSpec
from raytrain8m.runtime.lazy import tensorflow as tf


def variable_specs(config: ModelConfig) -> list[VariableSpec]:
    return [VariableSpec("baseline/weights", (config.feature_size, config.num_classes), "glorot"),
            VariableSpec("baseline/biases", (config.num_classes,), "zeros")]


def create_baseline_variables(config: ModelConfig, seed: int = 0, prefix: str = "",
                              zeros: bool = False) -> dict[str, tf.Variable]:
    shape = (config.feature_size, config.num_classes)
    limit = math.sqrt(6 / sum(shape))
    weights = tf.zeros(shape) if zeros else tf.random.stateless_uniform(shape, (seed, 0), -limit, limit)
    return {
        "baseline/weights": tf.Variable(weights, name=prefix + "baseline/weights"),
        "baseline/biases": tf.Variable(tf.zeros([config.num_classes]), name=prefix + "baseline/biases"),
    }


def mean_of_first_frames(frames: tf.Tensor, num_frames: tf.Tensor) -> tf.Tensor:
    """[batch, frames, d] → [batch, d]: the mean over each video's first `num_frames` frames only."""
    frames = tf.cast(frames, tf.float32)
    num_frames = tf.cast(num_frames, tf.int32)
    mask = tf.sequence_mask(num_frames, tf.shape(frames)[1], dtype=tf.float32)[:, :, None]
    count = tf.maximum(tf.cast(num_frames, tf.float32), 1.0)[:, None]
    return tf.reduce_sum(frames * mask, axis=1) / count


class MeanPoolLogistic(Forward):
    """frames, num_frames → sigmoid(mean(frames) · W + b)."""

    def __call__(self, frames: tf.Tensor, num_frames: tf.Tensor, training: bool = False) -> tf.Tensor:
        pooled = mean_of_first_frames(frames, num_frames)
        return tf.sigmoid(self._matmul(pooled, "baseline/weights") + self._get("baseline/biases"))

    def regularization_loss(self, l2: float) -> tf.Tensor:
        return l2 * tf.nn.l2_loss(self.variables["baseline/weights"])


def build_baseline(config: ModelConfig, seed: int = 0, prefix: str = "", zeros: bool = False) -> MeanPoolLogistic:
    return MeanPoolLogistic(config, create_baseline_variables(config, seed=seed, prefix=prefix, zeros=zeros))
