"""Gated NetVLAD (WILLOW's NetVLADModelLF, as the paper trains it), in plain TensorFlow ops.

Variables are plain `tf.Variable`s keyed by stable names (`tower/hidden1_weights`, ...):
the same code builds them eagerly for training (also under a tf.distribute strategy)
and in a `tf.compat.v1` graph for the MetaGraph export, and the names are what
checkpoints, averaging, fp16 casting and ensembling address.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping

import numpy as np
import tensorflow as tf

from raytrain8m.models import storage
from raytrain8m.models.config import BIG_TENSORS, ModelConfig

BN_DECAY = 0.999  # slim.batch_norm defaults, as in the WILLOW code the paper reuses
BN_EPSILON = 1e-3
INPUT_SCALE_DEFAULT = 1.0


@dataclasses.dataclass(frozen=True)
class VariableSpec:
    name: str
    shape: tuple[int, ...]
    initializer: str  # "glorot", "normal:<stddev>", "zeros", "ones"
    trainable: bool = True

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


def _batch_norm_specs(prefix: str, width: int) -> list[VariableSpec]:
    return [
        VariableSpec(f"{prefix}/beta", (width,), "zeros"),
        VariableSpec(f"{prefix}/gamma", (width,), "ones"),
        VariableSpec(f"{prefix}/moving_mean", (width,), "zeros", trainable=False),
        VariableSpec(f"{prefix}/moving_variance", (width,), "ones", trainable=False),
    ]


def _netvlad_specs(prefix: str, feature_size: int, cluster_size: int) -> list[VariableSpec]:
    stddev = 1 / math.sqrt(feature_size)
    return [
        VariableSpec(f"{prefix}/cluster_weights", (feature_size, cluster_size), f"normal:{stddev}"),
        *_batch_norm_specs(f"{prefix}/cluster_bn", cluster_size),
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
        *_batch_norm_specs("tower/hidden1_bn", h),
        VariableSpec("tower/hidden2_weights", (h, 2 * h), f"normal:{1 / math.sqrt(h)}"),
        VariableSpec("tower/hidden2_biases", (2 * h,), "zeros"),
        VariableSpec("tower/gating_weights", (2 * h, 2 * h), f"normal:{1 / math.sqrt(2 * h)}"),
        *_batch_norm_specs("tower/gating_bn", 2 * h),
        VariableSpec("tower/gates/weights", (2 * h, v * (m + 1)), "glorot"),
        VariableSpec("tower/experts/weights", (2 * h, v * m), "glorot"),
        VariableSpec("tower/experts/biases", (v * m,), "zeros"),
        VariableSpec("tower/gating_prob_weights", (v, v), f"normal:{1 / math.sqrt(v)}"),
        *_batch_norm_specs("tower/gating_prob_bn", v),
    ]


def storage_dtype(config: ModelConfig, name: str) -> tf.DType:
    """float16 for the four big tensors of an fp16 model, float32 for everything else."""
    return tf.float16 if config.fp16 and name in BIG_TENSORS else tf.float32


def num_parameters(config: ModelConfig) -> int:
    return sum(spec.size for spec in variable_specs(config))


def size_mib(config: ModelConfig, fp16: bool | None = None) -> float:
    """Bytes of all stored variables (moving statistics included) in MiB (docs/design.md, size
    accounting); int8 configs count their codes, scales and offsets (or codebooks)."""
    sized = config if fp16 is None else config.replace(fp16=fp16)
    return sum(storage.quantized_bytes(sized.int8, spec.name, spec.shape)
               if storage.is_quantized(sized, spec.name, spec.shape)
               else spec.size * storage_dtype(sized, spec.name).size
               for spec in variable_specs(sized)) / 2**20


def flops_per_video(config: ModelConfig) -> int:
    """Multiply-adds × 2 of one forward pass over `iterations` frames (the MFU benchmark uses it)."""
    k, h, v, m = config.cluster_size, config.hidden_size, config.num_classes, config.num_mixtures
    frames = config.iterations
    vlad = sum(2 * frames * d * c * 2 for d, c in ((config.rgb_size, k), (config.audio_size, k // 2)))
    vlad_size = config.rgb_size * k + config.audio_size * (k // 2)
    dense = vlad_size * h + h * 2 * h + (2 * h) ** 2 + 2 * h * v * (2 * m + 1) + v * v
    return vlad + 2 * dense


def _initial_value(spec: VariableSpec, seed: int, dtype: tf.DType) -> tf.Tensor:
    if spec.initializer == "zeros":
        value = tf.zeros(spec.shape)
    elif spec.initializer == "ones":
        value = tf.ones(spec.shape)
    elif spec.initializer == "glorot":
        fan_in, fan_out = spec.shape[0], spec.shape[-1]
        limit = math.sqrt(6 / (fan_in + fan_out))
        value = tf.random.stateless_uniform(spec.shape, (seed, 0), -limit, limit)
    else:
        stddev = float(spec.initializer.split(":")[1])
        value = tf.random.stateless_truncated_normal(spec.shape, (seed, 1), stddev=stddev)
    return tf.cast(value, dtype)


def create_variables(config: ModelConfig, seed: int = 0, prefix: str = "",
                     zeros: bool = False) -> dict[str, tf.Variable]:
    """Build the model's variables, keyed by name (without `prefix`).

    `prefix` (e.g. `member1/`) places the variables under another scope in the graph,
    as the ensemble does. `zeros=True` skips random initialisation (sizing, loading).
    Moving statistics are ON_READ/MEAN so each replica updates its own copy under
    MultiWorkerMirroredStrategy and reads give their mean.
    """
    variables = {}
    for index, spec in enumerate(variable_specs(config)):
        if storage.is_quantized(config, spec.name, spec.shape):  # int8: filled by loading only
            variables.update(storage.quantized_variables(config, spec.name, spec.shape, prefix))
            continue
        dtype = storage_dtype(config, spec.name)
        initial = tf.zeros(spec.shape, dtype) if zeros else _initial_value(spec, seed * 1000 + index, dtype)
        extra = {}
        if not spec.trainable:
            extra = dict(synchronization=tf.VariableSynchronization.ON_READ,
                         aggregation=tf.VariableAggregation.MEAN)
        variables[spec.name] = tf.Variable(initial, name=prefix + spec.name,
                                           trainable=spec.trainable, **extra)
    return variables


def sample_frame_indices(num_frames: tf.Tensor, iterations: int, training: bool) -> tf.Tensor:
    """Indices [batch, iterations] into each video's first `num_frames` frames.

    Training: a random contiguous sequence (the starter's SampleRandomSequence).
    Evaluation and inference: evenly spaced, deterministic.
    """
    num_frames = tf.maximum(tf.cast(num_frames, tf.int32), 1)[:, None]
    steps = tf.range(iterations)[None, :]
    if training:
        max_start = tf.maximum(num_frames - iterations, 0)
        start = tf.cast(tf.random.uniform(tf.shape(num_frames)) * tf.cast(max_start + 1, tf.float32), tf.int32)
        return tf.minimum(start + steps, num_frames - 1)
    return (steps * num_frames) // iterations


class GatedNetVLAD:
    """The forward pass over a dict of variables (see `create_variables`)."""

    def __init__(self, config: ModelConfig, variables: Mapping[str, tf.Variable]):
        self.config = config
        self.variables = variables

    def _get(self, name: str) -> tf.Tensor:
        return storage.read_weight(self.variables, name)

    def _batch_norm(self, prefix: str, x: tf.Tensor, training: bool) -> tf.Tensor:
        beta, gamma = self._get(f"{prefix}/beta"), self._get(f"{prefix}/gamma")
        moving_mean = self.variables[f"{prefix}/moving_mean"]
        moving_variance = self.variables[f"{prefix}/moving_variance"]
        if training:
            mean, variance = tf.nn.moments(x, axes=[0])
            moving_mean.assign(moving_mean * BN_DECAY + mean * (1 - BN_DECAY))
            moving_variance.assign(moving_variance * BN_DECAY + variance * (1 - BN_DECAY))
        else:
            mean, variance = tf.convert_to_tensor(moving_mean), tf.convert_to_tensor(moving_variance)
        return tf.nn.batch_normalization(x, mean, variance, beta, gamma, BN_EPSILON)

    def _netvlad(self, prefix: str, frames: tf.Tensor, feature_size: int, cluster_size: int,
                 training: bool) -> tf.Tensor:
        batch = tf.shape(frames)[0]
        flat = tf.reshape(frames, [-1, feature_size])
        activation = tf.matmul(flat, self._get(f"{prefix}/cluster_weights"))
        activation = tf.nn.softmax(self._batch_norm(f"{prefix}/cluster_bn", activation, training))
        activation = tf.reshape(activation, [batch, -1, cluster_size])
        centres = tf.reduce_sum(activation, axis=1, keepdims=True) * self._get(f"{prefix}/cluster_weights2")
        vlad = tf.matmul(activation, tf.reshape(flat, [batch, -1, feature_size]), transpose_a=True)
        vlad = tf.transpose(vlad, [0, 2, 1]) - centres  # [batch, feature, cluster]
        vlad = tf.math.l2_normalize(vlad, axis=1)
        vlad = tf.reshape(vlad, [batch, cluster_size * feature_size])
        return tf.math.l2_normalize(vlad, axis=1)

    def _context_gate(self, prefix: str, weights: str, x: tf.Tensor, training: bool) -> tf.Tensor:
        gates = self._batch_norm(prefix, tf.matmul(x, self._get(weights)), training)
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
        hidden = tf.matmul(tf.concat([video, audio], 1), self._get("tower/hidden1_weights"))
        hidden = tf.nn.relu6(self._batch_norm("tower/hidden1_bn", hidden, training))
        # The paper: the second layer is H × 2H plus a bias, with no activation.
        hidden = tf.matmul(hidden, self._get("tower/hidden2_weights")) + self._get("tower/hidden2_biases")
        hidden = self._context_gate("tower/gating_bn", "tower/gating_weights", hidden, training)
        return self._mixture_of_experts(hidden, training)

    def _mixture_of_experts(self, x: tf.Tensor, training: bool) -> tf.Tensor:
        v, m = self.config.num_classes, self.config.num_mixtures
        gates = tf.nn.softmax(tf.reshape(tf.matmul(x, self._get("tower/gates/weights")), [-1, m + 1]))
        experts = tf.matmul(x, self._get("tower/experts/weights")) + self._get("tower/experts/biases")
        experts = tf.sigmoid(tf.reshape(experts, [-1, m]))
        probabilities = tf.reshape(tf.reduce_sum(gates[:, :m] * experts, axis=1), [-1, v])
        return self._context_gate("tower/gating_prob_bn", "tower/gating_prob_weights", probabilities, training)

    def regularization_loss(self, l2: float) -> tf.Tensor:
        """L2 on the MoE weights (the starter's moe_l2), as the paper trains."""
        return l2 * tf.add_n([tf.nn.l2_loss(self._get(name))
                              for name in ("tower/gates/weights", "tower/experts/weights")])


def cross_entropy(probabilities: tf.Tensor, labels: tf.Tensor, epsilon: float = 1e-5) -> tf.Tensor:
    """The starter's CrossEntropyLoss: summed over classes, averaged over videos."""
    labels = tf.cast(labels, tf.float32)
    loss = labels * tf.math.log(probabilities + epsilon) + (1 - labels) * tf.math.log(1 - probabilities + epsilon)
    return tf.reduce_mean(tf.reduce_sum(-loss, axis=1))


def build(config: ModelConfig, seed: int = 0, prefix: str = "", zeros: bool = False) -> GatedNetVLAD:
    return GatedNetVLAD(config, create_variables(config, seed=seed, prefix=prefix, zeros=zeros))


def _build_baseline(config: ModelConfig, seed: int = 0, prefix: str = "", zeros: bool = False):
    from raytrain8m.models.baseline import build_baseline  # test-facing; see models/baseline.py
    return build_baseline(config, seed=seed, prefix=prefix, zeros=zeros)


MODELS: dict[str, Callable[..., GatedNetVLAD]] = {"gated_netvlad": build, "baseline": _build_baseline}
