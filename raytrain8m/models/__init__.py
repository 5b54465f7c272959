"""Model families (Gated NetVLAD, NeXtVLAD, the baseline): config, variables, forward pass and
size accounting, all through `registry` (no Ray here).

The config is imported at once and the rest on first use; TensorFlow (through `raytrain8m.runtime.lazy`)
only when a model is built, so that `--help`, flag parsing and size accounting never import it."""
import importlib

from raytrain8m.models.config import BIG_TENSORS, MODEL_JSON, NAME_FIELDS, ModelConfig

_LAZY = {
    "GatedNetVLAD": "gated_netvlad", "NeXtVLAD": "nextvlad",
    **{name: "layers" for name in ("VariableSpec", "cross_entropy", "sample_frame_indices")},
    **{name: "registry" for name in (
        "FAMILIES", "MODELS", "activation_floats", "build", "built_size", "create_variables", "family", "flops_per_video",
        "from_variables", "half_tensors", "num_parameters", "size_mib", "storage_dtype", "variable_specs")},
}

__all__ = ["BIG_TENSORS", "MODEL_JSON", "NAME_FIELDS", "ModelConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"raytrain8m.models.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
