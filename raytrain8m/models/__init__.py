"""Gated NetVLAD: config, variables, forward pass and size accounting (no Ray here)."""
from raytrain8m.models.config import BIG_TENSORS, MODEL_JSON, ModelConfig
from raytrain8m.models.gated_netvlad import (
    MODELS, GatedNetVLAD, VariableSpec, build, create_variables, cross_entropy, flops_per_video,
    num_parameters, sample_frame_indices, size_mib, storage_dtype, variable_specs,
)

__all__ = [
    "BIG_TENSORS", "MODEL_JSON", "MODELS", "GatedNetVLAD", "ModelConfig", "VariableSpec", "build",
    "create_variables", "cross_entropy", "flops_per_video", "num_parameters", "sample_frame_indices",
    "size_mib", "storage_dtype", "variable_specs",
]
