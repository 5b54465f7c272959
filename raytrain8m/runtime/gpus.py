"""What the sweep knows of each GPU type: memory to fit a trial, speed to order the grid.

Nodes advertise their type with the Ray node label `gpu-type` (`ray start --labels
gpu-type=T4`, or `labels:` per node type in the autoscaler YAML). Memory is what TF can
use of the card; speed is peak fp32 TFLOPS from the vendor's data sheets, used only to
rank types (largest, fastest first).
"""
from __future__ import annotations

import dataclasses

from raytrain8m.runtime.errors import ConfigError

GPU_TYPE_LABEL = "gpu-type"


@dataclasses.dataclass(frozen=True)
class GpuProfile:
    name: str
    memory_gib: float
    fp32_tflops: float
    where: str  # "on-prem" or the cloud that rents it


GPU_PROFILES: dict[str, GpuProfile] = {profile.name: profile for profile in (
    GpuProfile("1060", 6, 4.4, "on-prem"),          # GeForce GTX 1060 6GB (the paper's box)
    GpuProfile("1080Ti", 11, 11.3, "on-prem"),      # GeForce GTX 1080 Ti (the paper's box)
    GpuProfile("K80", 12, 4.1, "retired"),          # one of the K80's two dies; gone from GCP
    GpuProfile("P100", 16, 9.3, "gcp"),
    GpuProfile("T4", 16, 8.1, "gcp"),
    GpuProfile("V100", 16, 15.7, "gcp"),
    GpuProfile("L4", 24, 30.3, "gcp"),
    GpuProfile("A100", 40, 19.5, "gcp"),
    GpuProfile("H100", 80, 67.0, "gcp"),
)}


def profile(gpu_type: str) -> GpuProfile:
    try:
        return GPU_PROFILES[gpu_type]
    except KeyError:
        known = ", ".join(GPU_PROFILES)
        raise ConfigError(f"unknown GPU type {gpu_type!r}; known types: {known} "
                          "(add a GpuProfile in raytrain8m/runtime/gpus.py)") from None


def visible_gpus(where: str) -> list[str]:
    """TensorFlow's GPUs in this process, which Ray gave a GPU. None visible is an error: a
    CPU-only TensorFlow (or a CUDA mismatch) would otherwise train 50× slower without a word."""
    import os

    import ray

    from raytrain8m.runtime.lazy import tensorflow as tf

    gpus = [gpu.name for gpu in tf.config.list_physical_devices("GPU")]
    if not gpus:
        raise ConfigError(
            f"{where}: Ray assigned GPU {','.join(map(str, ray.get_gpu_ids())) or '?'} "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}), but TensorFlow "
            f"{tf.__version__} sees no GPU. Install the CUDA build on every GPU node "
            "(`pip install .[gpu]`, i.e. tensorflow[and-cuda]) or run without --use-gpu")
    return gpus
