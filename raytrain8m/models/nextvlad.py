"""NeXtVLAD (Lin et al., arXiv 1811.05014; 3rd place of the 2nd YouTube-8M challenge), plain TF ops.

Per modality (rgb N=1024 with K clusters and G groups, audio N=128 with K/2 clusters and G/2
groups, as the reference code): an expansion FC to λN, a group attention sigmoid(FC(λN → G))
masked by the valid frames, a soft assignment softmax over K of BN(x̃W) with W [λN, G·K]
weighted by the attention, residuals against K centres of size λN/G summed over frames and
groups, intra-normalised, flattened (K·λN/G) and batch-normalised. Then dropout, FC to H
(no bias) + BN, SE context gating (H → H/r, BN, relu, → H, sigmoid) and the classifier:
logistic (the paper's) or the starter's mixture of experts (`classifier="moe"`).

Parameters ≈ λN(N + G + K(G + (H+1)/G)) per modality (G/2 and K/2 for audio) plus the head
2H²/r + (H+1)V; biases and batch norm add 0.2% at the reference settings (`tests/test_models.py`
holds it to the built variables).
All frames given are used (no sampling): the masks make predictions depend only on each
video's first `num_frames` frames.
"""
from __future__ import annotations

from raytrain8m.models.config import ModelConfig
from raytrain8m.models.layers import Forward, VariableSpec, batch_norm_specs, he_normal
from raytrain8m.runtime.lazy import tensorflow as tf

MODALITIES = ("video", "audio")


def modalities(config: ModelConfig) -> list[tuple[str, int, int, int]]:
    """(scope, feature size N, clusters K, groups G) of each modality."""
    return [("tower/video_NeXtVLAD", config.rgb_size, config.cluster_size, config.groups),
            ("tower/audio_NeXtVLAD", config.audio_size, config.cluster_size // 2, config.groups // 2)]


def vlad_size(config: ModelConfig) -> int:
    """Width of the concatenated NeXtVLAD descriptors: Σ K·λN/G."""
    return sum(k * config.expansion * n // g for _, n, k, g in modalities(config))


def _nextvlad_specs(prefix: str, n: int, k: int, g: int, expansion: int) -> list[VariableSpec]:
    wide = expansion * n
    return [
        VariableSpec(f"{prefix}/expansion/weights", (n, wide), he_normal(n)),
        VariableSpec(f"{prefix}/expansion/biases", (wide,), "zeros"),
        VariableSpec(f"{prefix}/attention/weights", (wide, g), he_normal(wide)),
        VariableSpec(f"{prefix}/attention/biases", (g,), "zeros"),
        VariableSpec(f"{prefix}/cluster_weights", (wide, g * k), he_normal(wide)),
        *batch_norm_specs(f"{prefix}/cluster_bn", g * k),
        VariableSpec(f"{prefix}/cluster_weights2", (1, wide // g, k), he_normal(wide // g)),
        *batch_norm_specs(f"{prefix}/vlad_bn", k * wide // g),
    ]


def classifier_specs(config: ModelConfig, width: int) -> list[VariableSpec]:
    v, m = config.num_classes, config.num_mixtures
    if config.classifier == "moe":
        return [VariableSpec("tower/gates/weights", (width, v * (m + 1)), "glorot"),
                VariableSpec("tower/experts/weights", (width, v * m), "glorot"),
                VariableSpec("tower/experts/biases", (v * m,), "zeros")]
    return [VariableSpec("tower/logistic/weights", (width, v), "glorot"),
            VariableSpec("tower/logistic/biases", (v,), "zeros")]


def variable_specs(config: ModelConfig) -> list[VariableSpec]:
    """Every variable of the model, video branch, audio branch, then the head."""
    h, r = config.hidden_size, config.gating_reduction
    return [
        *(spec for prefix, n, k, g in modalities(config)
          for spec in _nextvlad_specs(prefix, n, k, g, config.expansion)),
        VariableSpec("tower/hidden1_weights", (vlad_size(config), h), he_normal(vlad_size(config))),
        *batch_norm_specs("tower/hidden1_bn", h),
        VariableSpec("tower/gating_weights_1", (h, h // r), he_normal(h)),
        *batch_norm_specs("tower/gating_bn", h // r),
        VariableSpec("tower/gating_weights_2", (h // r, h), he_normal(h // r)),
        *classifier_specs(config, h),
    ]


def big_tensors(config: ModelConfig) -> tuple[str, ...]:
    """The tensors stored as float16 in a compressed model: every weight matrix of the head
    and the video branch (about 99% of the size at the reference settings)."""
    video = "tower/video_NeXtVLAD"
    return (f"{video}/expansion/weights", f"{video}/cluster_weights", "tower/hidden1_weights",
            "tower/gating_weights_1", "tower/gating_weights_2", *classifier_weights(config))


def classifier_weights(config: ModelConfig) -> tuple[str, ...]:
    return ("tower/gates/weights", "tower/experts/weights") if config.classifier == "moe" \
        else ("tower/logistic/weights",)


def formula_parameters(config: ModelConfig) -> int:
    """The paper's count: λN(N + G + K(G + (H+1)/G)) per modality plus the SE gating and the
    logistic classifier; biases and batch norm left out."""
    lam, h, v = config.expansion, config.hidden_size, config.num_classes
    per_modality = sum(lam * n * (n + g + k * g) + k * lam * n // g * (h + 1)
                       for _, n, k, g in modalities(config))
    return per_modality + 2 * h * (h // config.gating_reduction) + (h + 1) * v


def flops_per_video(config: ModelConfig) -> int:
    """Multiply-adds × 2 of one forward pass over `iterations` frames."""
    frames, h, v, m = config.iterations, config.hidden_size, config.num_classes, config.num_mixtures
    per_frame = sum(config.expansion * n * (n + g + g * k) + g * k * config.expansion * n // g
                    for _, n, k, g in modalities(config))
    classifier = h * v * (2 * m + 1) if config.classifier == "moe" else h * v
    dense = vlad_size(config) * h + 2 * h * (h // config.gating_reduction) + classifier
    return 2 * (frames * per_frame + dense)


def activation_floats(config: ModelConfig) -> int:
    """Floats of one video's forward tensors (the memory model): per frame the expanded features,
    the attention, the assignments before and after the softmax; then the descriptors and head."""
    frames, v, m = config.iterations, config.num_classes, config.num_mixtures
    per_frame = sum(n + 2 * config.expansion * n + g + 3 * g * k for _, n, k, g in modalities(config))
    head = 4 * vlad_size(config) + 4 * config.hidden_size + 2 * config.hidden_size // config.gating_reduction
    classifier = v * (2 * m + 1) if config.classifier == "moe" else 2 * v
    return frames * per_frame + head + classifier


class NeXtVLAD(Forward):
    """frames [batch, frames, rgb+audio] dequantized, num_frames [batch] → probabilities [batch, V]."""

    def _nextvlad(self, prefix: str, frames: tf.Tensor, mask: tf.Tensor, n: int, k: int, g: int,
                  training: bool) -> tf.Tensor:
        batch, length = tf.shape(frames)[0], tf.shape(frames)[1]
        wide = self.config.expansion * n
        expanded = self._matmul(tf.reshape(frames, [-1, n]), f"{prefix}/expansion/weights") \
            + self._get(f"{prefix}/expansion/biases")                                     # [b·f, λN]
        attention = tf.sigmoid(self._matmul(expanded, f"{prefix}/attention/weights")
                               + self._get(f"{prefix}/attention/biases"))                   # [b·f, G]
        attention = tf.reshape(attention, [batch, length, g]) * mask[:, :, None]
        attention = tf.reshape(attention, [batch, length * g, 1])
        assignment = self._batch_norm(f"{prefix}/cluster_bn",
                                      self._matmul(expanded, f"{prefix}/cluster_weights"), training)
        assignment = tf.nn.softmax(tf.reshape(assignment, [batch, length * g, k])) * attention
        centres = tf.reduce_sum(assignment, axis=1, keepdims=True) * self._get(f"{prefix}/cluster_weights2")
        grouped = tf.reshape(expanded, [batch, length * g, wide // g])
        vlad = tf.transpose(self._matmul(assignment, grouped, transpose_a=True), [0, 2, 1]) - centres
        vlad = tf.reshape(tf.math.l2_normalize(vlad, axis=1), [batch, k * wide // g])
        return self._batch_norm(f"{prefix}/vlad_bn", vlad, training)

    def __call__(self, frames: tf.Tensor, num_frames: tf.Tensor, training: bool = False) -> tf.Tensor:
        config = self.config
        frames = tf.cast(frames, tf.float32)
        length = tf.shape(frames)[1]
        mask = tf.sequence_mask(tf.minimum(tf.cast(num_frames, tf.int32), length), length, dtype=tf.float32)
        features = (frames[:, :, :config.rgb_size], frames[:, :, config.rgb_size:])
        vlad = tf.concat([self._nextvlad(prefix, part, mask, n, k, g, training)
                          for (prefix, n, k, g), part in zip(modalities(config), features)], 1)
        if training and config.dropout > 0:
            vlad = tf.nn.dropout(vlad, rate=config.dropout)
        hidden = self._batch_norm("tower/hidden1_bn", self._matmul(vlad, "tower/hidden1_weights"), training)
        gates = self._matmul(hidden, "tower/gating_weights_1")
        gates = tf.nn.relu(self._batch_norm("tower/gating_bn", gates, training))
        hidden = hidden * tf.sigmoid(self._matmul(gates, "tower/gating_weights_2"))
        if config.classifier == "moe":
            return self._moe("tower/", hidden)
        return tf.sigmoid(self._matmul(hidden, "tower/logistic/weights") + self._get("tower/logistic/biases"))

    def regularization_loss(self, l2: float) -> tf.Tensor:
        """L2 on the classifier's weights (the trainer's `moe_l2`)."""
        return l2 * tf.add_n([tf.nn.l2_loss(self._get(name)) for name in classifier_weights(self.config)])
