"""Gated NetVLAD: config, variables, forward pass and size accounting (no Ray here).

The config is imported at once; the rest (TensorFlow) on first use, so that commands'
`--help` and flag parsing never import TensorFlow."""
import importlib

from raytrain8m.models.config import BIG_TENSORS, MODEL_JSON, ModelConfig

_LAZY = {name: "raytrain8m.models.gated_netvlad" for name in (
    "MODELS", "GatedNetVLAD", "VariableSpec", "build", "create_variables", "cross_entropy", "flops_per_video",
    "num_parameters", "sample_frame_indices", "size_mib", "storage_dtype", "variable_specs")}

__all__ = ["BIG_TENSORS", "MODEL_JSON", "ModelConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
