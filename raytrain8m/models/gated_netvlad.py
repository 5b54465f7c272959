"""Gated NetVLAD (WILLOW's NetVLADModelLF, as the paper trains it), in plain TensorFlow ops.

Variable names (`tower/hidden1_weights`, ...) and shapes are the paper's (docs/design.md);
the shared machinery (specs, creation, batch norm) is in `layers`, the family's entry in
`registry`.
"""
from __future__ import annotations

import math

from raytrain8m.models.config import ModelConfig
from raytrain8m.models.layers import Forward, VariableSpec, batch_norm_specs, sample_frame_indices
from raytrain8m.runtime.lazy import tensorflow as tf


def _netvlad_specs(prefix: str, feature_size: int, cluster_size: int) -> list[VariableSpec]:
    stddev = 1 / math.sqrt(feature_size)
    return [
        VariableSpec(f"{prefix}/cluster_weights", (feature_size, cluster_size), f"normal:{stddev}"),
        *batch_norm_specs(f"{prefix}/cluster_bn", cluster_size),
        VariableSpec(f"{prefix}/cluster_weights2", (1, feature_size, cluster_size), f"normal:{stddev}"),
    ]


def variable_specs(config: ModelConfig) -> list[VariableSpec]:
    """Every variable of the model, in the order the paper's graph creates them."""
    k, h, v, m = config.cluster_size, config.hidden_size, config.num_classes, config.num_mixtures
    vlad_size = config.rgb_size * k + config.audio_size * (k // 2)
    return [
        *_netvlad_specs("tower/video_VLAD", config.rgb_size, k),
        *_netvlad_specs("tower/audio_VLAD", config.audio_size, k // 2),
        VariableSpec("tower/hidden1_weights", (vlad_size, h), f"normal:{1 / math.sqrt(k)}"),
        *batch_norm_specs("tower/hidden1_bn", h),
        VariableSpec("tower/hidden2_weights", (h, 2 * h), f"normal:{1 / math.sqrt(h)}"),
        VariableSpec("tower/hidden2_biases", (2 * h,), "zeros"),
        VariableSpec("tower/gating_weights", (2 * h, 2 * h), f"normal:{1 / math.sqrt(2 * h)}"),
        *batch_norm_specs("tower/gating_bn", 2 * h),
        VariableSpec("tower/gates/weights", (2 * h, v * (m + 1)), "glorot"),
        VariableSpec("tower/experts/weights", (2 * h, v * m), "glorot"),
        VariableSpec("tower/experts/biases", (v * m,), "zeros"),
        VariableSpec("tower/gating_prob_weights", (v, v), f"normal:{1 / math.sqrt(v)}"),
        *batch_norm_specs("tower/gating_prob_bn", v),
    ]


def flops_per_video(config: ModelConfig) -> int:
    """Multiply-adds × 2 of one forward pass over `iterations` frames (the MFU benchmark uses it)."""
    k, h, v, m = config.cluster_size, config.hidden_size, config.num_classes, config.num_mixtures
    frames = config.iterations
    vlad = sum(2 * frames * d * c * 2 for d, c in ((config.rgb_size, k), (config.audio_size, k // 2)))
    vlad_size = config.rgb_size * k + config.audio_size * (k // 2)
    dense = vlad_size * h + h * 2 * h + (2 * h) ** 2 + 2 * h * v * (2 * m + 1) + v * v
    return vlad + 2 * dense


class GatedNetVLAD(Forward):
    """The forward pass over a dict of variables (see `registry.create_variables`)."""

    def _netvlad(self, prefix: str, frames: tf.Tensor, feature_size: int, cluster_size: int,
                 training: bool) -> tf.Tensor:
        batch = tf.shape(frames)[0]
        flat = tf.reshape(frames, [-1, feature_size])
        activation = self._matmul(flat, f"{prefix}/cluster_weights")
        activation = tf.nn.softmax(self._batch_norm(f"{prefix}/cluster_bn", activation, training))
        activation = tf.reshape(activation, [batch, -1, cluster_size])
        centres = tf.reduce_sum(activation, axis=1, keepdims=True) * self._get(f"{prefix}/cluster_weights2")
        vlad = self._matmul(activation, tf.reshape(flat, [batch, -1, feature_size]), transpose_a=True)
        vlad = tf.transpose(vlad, [0, 2, 1]) - centres  # [batch, feature, cluster]
        vlad = tf.math.l2_normalize(vlad, axis=1)
        vlad = tf.reshape(vlad, [batch, cluster_size * feature_size])
        return tf.math.l2_normalize(vlad, axis=1)

    def _context_gate(self, prefix: str, weights: str, x: tf.Tensor, training: bool) -> tf.Tensor:
        gates = self._batch_norm(prefix, self._matmul(x, weights), training)
        return x * tf.sigmoid(gates)

    def __call__(self, frames: tf.Tensor, num_frames: tf.Tensor, training: bool = False) -> tf.Tensor:
        """frames [batch, max_frames, rgb+audio] dequantized, num_frames [batch] → probabilities [batch, V]."""
        config = self.config
        indices = sample_frame_indices(num_frames, config.iterations, training)
        sampled = tf.gather(tf.cast(frames, tf.float32), indices, batch_dims=1)
        k = config.cluster_size
        video = self._netvlad("tower/video_VLAD", sampled[:, :, :config.rgb_size], config.rgb_size, k, training)
        audio = self._netvlad("tower/audio_VLAD", sampled[:, :, config.rgb_size:], config.audio_size,
                              k // 2, training)
        hidden = self._matmul(tf.concat([video, audio], 1), "tower/hidden1_weights")
        hidden = tf.nn.relu6(self._batch_norm("tower/hidden1_bn", hidden, training))
        # The paper: the second layer is H × 2H plus a bias, with no activation.
        hidden = self._matmul(hidden, "tower/hidden2_weights") + self._get("tower/hidden2_biases")
        hidden = self._context_gate("tower/gating_bn", "tower/gating_weights", hidden, training)
        return self._mixture_of_experts(hidden, training)

    def _mixture_of_experts(self, x: tf.Tensor, training: bool) -> tf.Tensor:
        probabilities = self._moe("tower/", x)
        return self._context_gate("tower/gating_prob_bn", "tower/gating_prob_weights", probabilities, training)

    def regularization_loss(self, l2: float) -> tf.Tensor:
        """L2 on the MoE weights (the starter's moe_l2), as the paper trains."""
        return l2 * tf.add_n([tf.nn.l2_loss(self._get(name))
                              for name in ("tower/gates/weights", "tower/experts/weights")])


def activation_floats(config: ModelConfig) -> int:
    """Floats of one video's forward tensors; NetVLAD's residuals dominate (the memory model)."""
    k, v, m = config.cluster_size, config.num_classes, config.num_mixtures
    vlad = config.rgb_size * k + config.audio_size * (k // 2)
    return (config.iterations * (vlad + config.feature_size + k + k // 2)  # residuals, input, assignments
            + 2 * vlad + 6 * config.hidden_size                            # normalised VLAD, hidden, gating
            + v * (2 * m + 1) + 2 * v)                                     # MoE gates/experts, output gating


