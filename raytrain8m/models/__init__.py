"""Model families (Gated NetVLAD, NeXtVLAD, the baseline): config, variables, forward pass and
size accounting, all through `registry` (no Ray here)."""
from raytrain8m.models.config import BIG_TENSORS, MODEL_JSON, NAME_FIELDS, ModelConfig
from raytrain8m.models.gated_netvlad import GatedNetVLAD
from raytrain8m.models.layers import VariableSpec, cross_entropy, sample_frame_indices
from raytrain8m.models.nextvlad import NeXtVLAD
from raytrain8m.models.registry import (
    FAMILIES, MODELS, activation_floats, build, create_variables, family, flops_per_video, from_variables,
    half_tensors, num_parameters, size_mib, storage_dtype, variable_specs,
)

__all__ = [
    "BIG_TENSORS", "FAMILIES", "MODEL_JSON", "MODELS", "NAME_FIELDS", "GatedNetVLAD", "ModelConfig", "NeXtVLAD",
    "VariableSpec", "activation_floats", "build", "create_variables", "cross_entropy", "family",
    "flops_per_video", "from_variables", "half_tensors", "num_parameters", "sample_frame_indices", "size_mib",
    "storage_dtype", "variable_specs",
]
