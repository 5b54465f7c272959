"""Model families by name: each stage (train, size, average, compress, ensemble, export) asks here.

A family is its variables (`variable_specs`), the tensors an fp16 model stores as float16, its
forward pass over a dict of variables, and its cost (FLOPs, activations) for the MFU benchmark
and the sweep's memory model. `ModelConfig.family` selects one.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import numpy as np

from raytrain8m.models import baseline, gated_netvlad, nextvlad, storage
from raytrain8m.models.config import BIG_TENSORS, FAMILY_NAMES, ModelConfig
from raytrain8m.models.layers import VariableSpec, make_variables
from raytrain8m.runtime.errors import ConfigError
from raytrain8m.runtime.lazy import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    variable_specs: Callable[[ModelConfig], list[VariableSpec]]
    forward: Callable[[ModelConfig, Mapping[str, tf.Variable]], object]  # (config, variables) → model
    big_tensors: Callable[[ModelConfig], tuple[str, ...]]
    flops_per_video: Callable[[ModelConfig], int]
    activation_floats: Callable[[ModelConfig], int]   # per video, forward pass


def _baseline_flops(config: ModelConfig) -> int:
    return 2 * (config.iterations * config.feature_size + config.feature_size * config.num_classes)


FAMILIES: dict[str, Family] = {
    "gated_netvlad": Family("gated_netvlad", gated_netvlad.variable_specs, gated_netvlad.GatedNetVLAD,
                            lambda config: BIG_TENSORS, gated_netvlad.flops_per_video,
                            gated_netvlad.activation_floats),
    "nextvlad": Family("nextvlad", nextvlad.variable_specs, nextvlad.NeXtVLAD, nextvlad.big_tensors,
                       nextvlad.flops_per_video, nextvlad.activation_floats),
    # Test-facing: what a real model must beat (models/baseline.py).
    "baseline": Family("baseline", baseline.variable_specs, baseline.MeanPoolLogistic, lambda config: (),
                       _baseline_flops, lambda config: config.iterations * config.feature_size),
}

assert tuple(FAMILIES) == FAMILY_NAMES, "models.config.FAMILY_NAMES must list the registry's families"


def family(config: ModelConfig) -> Family:
    if config.family not in FAMILIES:
        raise ConfigError(f"unknown model family {config.family!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[config.family]


def variable_specs(config: ModelConfig) -> list[VariableSpec]:
    """Every variable of the model, in the order it is created."""
    return family(config).variable_specs(config)


def half_tensors(config: ModelConfig) -> tuple[str, ...]:
    """The tensors an fp16 model stores as float16 (cast to float32 where they are used)."""
    return family(config).big_tensors(config)


def storage_dtype(config: ModelConfig, name: str) -> np.dtype:
    """float16 for the big tensors of an fp16 model, float32 for everything else."""
    return np.dtype(np.float16 if config.fp16 and name in half_tensors(config) else np.float32)


def num_parameters(config: ModelConfig) -> int:
    """Every variable's elements, batch-norm moving statistics included."""
    return sum(spec.size for spec in variable_specs(config))


def size_mib(config: ModelConfig, fp16: bool | None = None) -> float:
    """Bytes of all variables (moving statistics included) in MiB (docs/design.md, size accounting)."""
    sized = config if fp16 is None else config.replace(fp16=fp16)
    return sum(storage.quantized_bytes(sized.int8, spec.name, spec.shape)
               if storage.is_quantized(sized, spec.name, spec.shape)
               else spec.size * storage_dtype(sized, spec.name).itemsize
               for spec in variable_specs(sized)) / 2**20


def built_size(config: ModelConfig) -> tuple[float, int]:
    """(MiB, parameters) of the variables `create_variables` really builds for `config` (moving
    statistics included): the check on `size_mib`'s accounting from the specs. Builds them
    (zeros), so it takes the model's memory for a moment."""
    variables = create_variables(config, zeros=True)
    size_bytes = sum(int(np.prod(v.shape)) * v.dtype.size for v in variables.values())
    parameters = sum(int(np.prod(v.shape)) for v in variables.values())
    return size_bytes / 2**20, parameters


def flops_per_video(config: ModelConfig) -> int:
    """Multiply-adds × 2 of one forward pass (the MFU benchmark and placement use it)."""
    return family(config).flops_per_video(config)


def activation_floats(config: ModelConfig) -> int:
    """Floats of one video's forward tensors (the sweep's memory model)."""
    return family(config).activation_floats(config)


def create_variables(config: ModelConfig, seed: int = 0, prefix: str = "",
                     zeros: bool = False) -> dict[str, tf.Variable]:
    """The model's variables keyed by name (without `prefix`); see `layers.make_variables`."""
    if config.family == "baseline":  # keeps its own initialisation (the train test's reference)
        return baseline.create_baseline_variables(config, seed=seed, prefix=prefix, zeros=zeros)
    return make_variables(variable_specs(config), half_tensors(config) if config.fp16 else (),
                          seed, prefix, zeros, config.int8)


def from_variables(config: ModelConfig, variables: Mapping[str, tf.Variable]):
    """The forward pass of `config`'s family over these variables."""
    return family(config).forward(config, variables)


def build(config: ModelConfig, seed: int = 0, prefix: str = "", zeros: bool = False):
    """A model of `config`'s family with freshly created variables."""
    return from_variables(config, create_variables(config, seed=seed, prefix=prefix, zeros=zeros))


def _builder(name: str) -> Callable:
    def build_family(config: ModelConfig, seed: int = 0, prefix: str = "", zeros: bool = False):
        if config.family != name:
            config = config.replace(family=name)
        return build(config, seed=seed, prefix=prefix, zeros=zeros)
    return build_family


MODELS: dict[str, Callable] = {name: _builder(name) for name in FAMILIES}
