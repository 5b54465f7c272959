"""What every model family shares: variable specs and their creation, batch norm, frame handling.

Variables are plain `tf.Variable`s keyed by stable names (`tower/hidden1_weights`, ...): the
same code builds them eagerly for training (also under a tf.distribute strategy) and in a
`tf.compat.v1` graph for the MetaGraph export, and the names are what checkpoints, averaging,
fp16 casting and ensembling address.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Iterable, Mapping, Sequence

import numpy as np

from raytrain8m.models import storage
from raytrain8m.runtime.lazy import tensorflow as tf

BN_DECAY = 0.999  # slim.batch_norm defaults, as in the WILLOW and NeXtVLAD code
BN_EPSILON = 1e-3


@dataclasses.dataclass(frozen=True)
class VariableSpec:
    name: str
    shape: tuple[int, ...]
    initializer: str  # "glorot", "normal:<stddev>", "zeros", "ones"
    trainable: bool = True

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


def batch_norm_specs(prefix: str, width: int) -> list[VariableSpec]:
    return [
        VariableSpec(f"{prefix}/beta", (width,), "zeros"),
        VariableSpec(f"{prefix}/gamma", (width,), "ones"),
        VariableSpec(f"{prefix}/moving_mean", (width,), "zeros", trainable=False),
        VariableSpec(f"{prefix}/moving_variance", (width,), "ones", trainable=False),
    ]


def he_normal(fan_in: int) -> str:
    """slim's variance_scaling_initializer (factor 2, fan in), the NeXtVLAD code's default."""
    return f"normal:{math.sqrt(2 / fan_in)}"


def initial_value(spec: VariableSpec, seed: int, dtype: tf.DType) -> tf.Tensor:
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


def make_variables(specs: Sequence[VariableSpec], half: Iterable[str], seed: int = 0, prefix: str = "",
                   zeros: bool = False, int8: str = "") -> dict[str, tf.Variable]:
    """Variables for `specs`, keyed by name (without `prefix`); names in `half` stored as float16.

    `prefix` (e.g. `member1/`) places the variables under another scope in the graph, as the
    ensemble does. `zeros=True` skips random initialisation (sizing, loading). Moving
    statistics are ON_READ/MEAN so each replica updates its own copy under
    MultiWorkerMirroredStrategy and reads give their mean.
    """
    half = set(half)
    variables = {}
    for index, spec in enumerate(specs):
        if storage.quantizes(int8, spec.shape):  # int8 (models/storage.py): filled by loading only
            variables.update(storage.quantized_variables(int8, spec.name, spec.shape, prefix))
            continue
        dtype = tf.float16 if spec.name in half else tf.float32
        initial = tf.zeros(spec.shape, dtype) if zeros else initial_value(spec, seed * 1000 + index, dtype)
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


def cross_entropy(probabilities: tf.Tensor, labels: tf.Tensor, epsilon: float = 1e-5) -> tf.Tensor:
    """The starter's CrossEntropyLoss: summed over classes, averaged over videos."""
    labels = tf.cast(labels, tf.float32)
    loss = labels * tf.math.log(probabilities + epsilon) + (1 - labels) * tf.math.log(1 - probabilities + epsilon)
    return tf.reduce_mean(tf.reduce_sum(-loss, axis=1))


class Forward:
    """A forward pass over a dict of name-keyed variables: float16 storage read as float32.

    Every matrix product goes through `_matmul`, in `compute_dtype`: float32 unless training
    with mixed precision asked for bfloat16 or float16 (`with_compute_dtype`). Variables and
    everything between the products (batch norm, softmax, normalisation, the output) stay
    float32, so the graph an export builds (float32) is the one it always was."""

    compute_dtype = None  # float32, no casts (a class attribute must not import TensorFlow)

    def __init__(self, config, variables: Mapping[str, tf.Variable]):
        self.config = config
        self.variables = variables

    def with_compute_dtype(self, dtype: tf.DType) -> "Forward":
        """The same model over the same variables, its matrix products in `dtype`."""
        model = copy.copy(self)
        model.compute_dtype = None if tf.as_dtype(dtype) == tf.float32 else tf.as_dtype(dtype)
        return model

    def _get(self, name: str) -> tf.Tensor:
        return storage.read_weight(self.variables, name)

    def _matmul(self, x: tf.Tensor, y: tf.Tensor | str, **kwargs) -> tf.Tensor:
        """x · y (`y` a tensor or a weight's name; tf.matmul's keywords) in the compute dtype,
        both operands cast right here; the product comes back float32."""
        y = self._get(y) if isinstance(y, str) else y
        if self.compute_dtype is None:
            return tf.matmul(x, y, **kwargs)
        product = tf.matmul(tf.cast(x, self.compute_dtype), tf.cast(y, self.compute_dtype), **kwargs)
        return tf.cast(product, tf.float32)

    def _batch_norm(self, prefix: str, x: tf.Tensor, training: bool) -> tf.Tensor:
        """Batch norm over axis 0; training updates the moving statistics (slim's decay)."""
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

    def _moe(self, prefix: str, x: tf.Tensor) -> tf.Tensor:
        """The starter's MoeModel: softmax gates over M experts and a dummy one predicting 0."""
        v, m = self.config.num_classes, self.config.num_mixtures
        gates = tf.nn.softmax(tf.reshape(self._matmul(x, f"{prefix}gates/weights"), [-1, m + 1]))
        experts = self._matmul(x, f"{prefix}experts/weights") + self._get(f"{prefix}experts/biases")
        experts = tf.sigmoid(tf.reshape(experts, [-1, m]))
        return tf.reshape(tf.reduce_sum(gates[:, :m] * experts, axis=1), [-1, v])
