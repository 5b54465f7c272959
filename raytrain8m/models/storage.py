"""How a model's weights are stored: float32, float16, or 8-bit codes dequantized in the graph.

Family-independent: any model family names its variables and reads each weight through
`read_weight`, so an int8 checkpoint or export of any family works the same way.

int8 (`ModelConfig.int8`, beyond the paper, which fell back to fp16): every weight with at least
two dimensions and `INT8_MIN_ELEMENTS` values (this includes the four big tensors fp16 casts)
is stored as uint8 codes `<name>/quantized` of the same shape, plus either
  - "affine" (default): per output column (last axis) `<name>/scale` and `<name>/offset`,
    w ≈ code · scale + offset, or
  - "codebook": one 256-value table `<name>/codebook` (1-D k-means over the whole tensor),
    w ≈ codebook[code].
Both dequantize to float32 where the weight is used, with ops the starter's TF1 graph loads.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np

from raytrain8m.models.config import INT8_SCHEMES, ModelConfig
from raytrain8m.runtime.errors import ConfigError
from raytrain8m.runtime.lazy import tensorflow as tf

PRECISIONS = ("fp32", "fp16", "int8")
INT8_MIN_ELEMENTS = 1024  # smaller weights (biases, batch norm, small layers) stay float32
QUANTIZED = "/quantized"
_CODEBOOK_FIT_SAMPLES = 1 << 20
_KMEANS_ITERATIONS = 20


def with_precision(config: ModelConfig, precision: str, scheme: str = "affine") -> ModelConfig:
    """`config` stored at `precision` (fp32, fp16, int8 with `scheme`)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return config.replace(fp16=precision == "fp16", int8=scheme if precision == "int8" else "")


def precision_of(config: ModelConfig) -> str:
    return "int8" if config.int8 else "fp16" if config.fp16 else "fp32"


def is_quantized(config: ModelConfig, name: str, shape: Iterable[int]) -> bool:
    """Whether weight `name` of `shape` is stored as uint8 codes under `config`."""
    return quantizes(config.int8, shape)


def quantizes(scheme: str, shape: Iterable[int]) -> bool:
    shape = tuple(shape)
    return bool(scheme) and len(shape) >= 2 and math.prod(shape) >= INT8_MIN_ELEMENTS


def quantized_shapes(scheme: str, name: str, shape: tuple[int, ...]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The stored tensors (name → shape, dtype) that replace weight `name`."""
    stored = {name + QUANTIZED: (tuple(shape), np.dtype(np.uint8))}
    if scheme == "codebook":
        stored[f"{name}/codebook"] = ((256,), np.dtype(np.float32))
    else:
        stored[f"{name}/scale"] = ((shape[-1],), np.dtype(np.float32))
        stored[f"{name}/offset"] = ((shape[-1],), np.dtype(np.float32))
    return stored


def quantized_bytes(scheme: str, name: str, shape: tuple[int, ...]) -> int:
    return sum(math.prod(s) * dtype.itemsize for s, dtype in quantized_shapes(scheme, name, shape).values())


def quantized_variables(scheme: str, name: str, shape: tuple[int, ...],
                        prefix: str = "") -> dict[str, tf.Variable]:
    """Zero-filled stored variables for a quantized weight (filled by loading, never trained)."""
    return {stored: tf.Variable(tf.zeros(s, dtype), name=prefix + stored, trainable=False)
            for stored, (s, dtype) in quantized_shapes(scheme, name, shape).items()}


def read_weight(variables: Mapping[str, tf.Variable], name: str) -> tf.Tensor:
    """Weight `name` as float32: read as is, cast from float16, or dequantized from uint8 codes."""
    if name in variables:
        value = variables[name]
        return tf.cast(value, tf.float32) if value.dtype != tf.float32 else value
    codes = variables[name + QUANTIZED]
    if f"{name}/codebook" in variables:
        return tf.gather(variables[f"{name}/codebook"], tf.cast(codes, tf.int32))
    return tf.cast(codes, tf.float32) * variables[f"{name}/scale"] + variables[f"{name}/offset"]


# -- numpy side: quantize a checkpoint's weights, and back ------------------------------------------

def quantize_affine(value: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 codes, per-last-axis scale and offset with value ≈ codes · scale + offset."""
    columns = value.reshape(-1, value.shape[-1]).astype(np.float32)
    low, high = columns.min(axis=0), columns.max(axis=0)
    scale = (high - low) / 255
    safe = np.where(scale > 0, scale, 1)
    codes = np.clip(np.rint((columns - low) / safe), 0, 255).astype(np.uint8)
    return codes.reshape(value.shape), scale.astype(np.float32), low.astype(np.float32)


def fit_codebook(value: np.ndarray, seed: int = 0) -> np.ndarray:
    """256 sorted values: a uniform grid over `value`'s range refined by 1-D k-means (Lloyd) on a sample."""
    flat = value.reshape(-1).astype(np.float32)
    if flat.size > _CODEBOOK_FIT_SAMPLES:
        flat = np.random.default_rng(seed).choice(flat, _CODEBOOK_FIT_SAMPLES, replace=False)
    # Lloyd from the uniform grid only lowers its squared error (quantiles starve the tails).
    codebook = np.linspace(flat.min(), flat.max(), 256, dtype=np.float64)
    for _ in range(_KMEANS_ITERATIONS):
        codes = np.searchsorted((codebook[1:] + codebook[:-1]) / 2, flat)
        counts = np.bincount(codes, minlength=256)
        sums = np.bincount(codes, weights=flat, minlength=256)
        codebook = np.where(counts > 0, sums / np.maximum(counts, 1), codebook)
        codebook.sort()
    return codebook.astype(np.float32)


def quantize_codebook(value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codebook = fit_codebook(value)
    bounds = (codebook[1:] + codebook[:-1]) / 2
    return np.searchsorted(bounds, value.astype(np.float32)).astype(np.uint8), codebook


def quantize(scheme: str, name: str, value: np.ndarray) -> dict[str, np.ndarray]:
    """The stored tensors of weight `name` (see `quantized_shapes`)."""
    if scheme not in INT8_SCHEMES:
        raise ConfigError(f"int8 scheme must be one of {', '.join(INT8_SCHEMES)}, got {scheme!r}")
    if scheme == "codebook":
        codes, codebook = quantize_codebook(value)
        return {name + QUANTIZED: codes, f"{name}/codebook": codebook}
    codes, scale, offset = quantize_affine(value)
    return {name + QUANTIZED: codes, f"{name}/scale": scale, f"{name}/offset": offset}


def to_precision(config: ModelConfig, tensors: Mapping[str, np.ndarray], precision: str,
                 scheme: str = "affine",
                 storage_dtype=None) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """float32 weights → the config and stored tensors at `precision`.

    fp16 needs the family's `storage_dtype(config, name)` (which tensors it casts); int8 is
    decided by shape alone (`is_quantized`).
    """
    stored_config = with_precision(config, precision, scheme)
    stored: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        value = np.asarray(value)
        if is_quantized(stored_config, name, value.shape):
            stored.update(quantize(scheme, name, value))
        elif precision == "fp16" and storage_dtype is not None:
            stored[name] = value.astype(storage_dtype(stored_config, name))
        else:
            stored[name] = value.astype(np.float32) if value.dtype == np.float16 else value
    return stored_config, stored


def to_float32(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stored tensors (any precision) → float32 weights under their model names."""
    result: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if name.endswith(QUANTIZED):
            weight = name[:-len(QUANTIZED)]
            if f"{weight}/codebook" in tensors:
                result[weight] = tensors[f"{weight}/codebook"][value.astype(np.int64)]
            else:
                result[weight] = (value.astype(np.float32) * tensors[f"{weight}/scale"]
                                  + tensors[f"{weight}/offset"]).astype(np.float32)
        elif name.rsplit("/", 1)[0] + QUANTIZED not in tensors:  # not a scale/offset/codebook
            result[name] = value.astype(np.float32) if value.dtype == np.float16 else value
    return result
