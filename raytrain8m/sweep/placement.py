"""Which GPU type and batch size each model of a sweep gets, decided before anything starts.

A trial's memory on one GPU is modelled from the model's own variables (weights, Adam's
two slots, gradients), its activations at a batch size, and the framework's overhead.
Each config goes to a GPU type it fits at the largest batch size the paper used (160, then
halving), and the biggest configs are placed first on the fastest types, balancing the
expected finish time of every type (longest-processing-time first). A config that fits
nowhere is refused, with every such config named, before any trial starts.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Any, Iterable, Mapping, Sequence

from raytrain8m import models  # its sizing imports TensorFlow: used at call time, not at import
from raytrain8m.models import ModelConfig
from raytrain8m.runtime.errors import ConfigError
from raytrain8m.runtime.gpus import GPU_PROFILES, GPU_TYPE_LABEL, GpuProfile

log = logging.getLogger(__name__)

GIB = 2**30
FLOAT_BYTES = 4
BATCH_SIZES = (160, 80, 40, 20)  # the paper's 80–160 per GPU, halving down to a floor
FRAMEWORK_OVERHEAD_GIB = 0.75    # CUDA context, cuDNN/cuBLAS workspaces, allocator slack
# Forward activations are kept for the backward pass, which holds their gradients too.
ACTIVATION_FACTOR = 2
CPU = "cpu"  # the "GPU type" of a trial on a CPU-only cluster
# The paper's 28 models (section 3: Table 1's 18, then the 10 it eliminated); `--grid paper`.
PAPER_GRID = ("K24-H1440,K32-H1280,K100-H800,K16-H1280,K32-H1024,K20-H960,K16-H800,K64-H512,"
              "K100-H400,K32-H600,K32-H512,K16-H512,K8-H512,K16-H400,K10-H400,K32-H256,K10-H300,"
              "K16-H256,K20-H1600,K64-H1024,K150-H600,K128-H512,K16-H1024,K32-H400,K128-H1024,"
              "K8-H1024,K32-H800,K8-H800")


def profile(gpu_type: str, profiles: Mapping[str, GpuProfile] = GPU_PROFILES) -> GpuProfile:
    """The profile of a GPU type (tests pass scaled-down profiles for simulated nodes)."""
    if gpu_type not in profiles:
        raise ConfigError(f"unknown GPU type {gpu_type!r}; known types: {', '.join(profiles)} "
                          "(add a GpuProfile in raytrain8m/runtime/gpus.py)")
    return profiles[gpu_type]


# --- the grid ---------------------------------------------------------------------------

def parse_grid(names: str | Sequence[str] = "", cluster_sizes: str | Sequence[int] = "",
               hidden_sizes: str | Sequence[int] = "", **model_fields: Any) -> list[ModelConfig]:
    """Configs from explicit names (`K24-H1440,K32-H1024`) and/or cluster × hidden sizes,
    each once, in the order given; `model_fields` (e.g. num_classes=20) apply to all.
    The name `paper` stands for the paper's 28 models."""
    if isinstance(names, str):
        names = [name for name in names.split(",") if name.strip()]
    names = [part for name in names for part in (PAPER_GRID.split(",") if name.strip() == "paper" else [name])]
    clusters, hiddens = parse_ints(cluster_sizes, "cluster sizes"), parse_ints(hidden_sizes, "hidden sizes")
    if bool(clusters) != bool(hiddens):
        raise ConfigError("give both cluster sizes and hidden sizes (their product is the grid)")
    configs = [ModelConfig.from_name(name, **model_fields) for name in names]
    configs += [ModelConfig(cluster_size=k, hidden_size=h, **model_fields)
                for k, h in itertools.product(clusters, hiddens)]
    if not configs:
        raise ConfigError("empty grid: give model names (K32-H1024,…), or cluster and hidden sizes")
    unique = list(dict.fromkeys(configs))
    return unique


def parse_ints(values: str | Sequence[int], what: str) -> list[int]:
    if isinstance(values, str):
        values = [value for value in values.split(",") if value.strip()]
    try:
        return [int(value) for value in values]
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be comma-separated integers, got {values!r}") from None


# --- the memory model -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """GiB one training worker needs on its device."""

    weights: float
    optimizer: float
    gradients: float
    activations: float
    overhead: float

    @property
    def total(self) -> float:
        return self.weights + self.optimizer + self.gradients + self.activations + self.overhead


def activation_floats(config: ModelConfig, batch_size: int) -> int:
    """Floats of the forward tensors of one batch, from the model's family (NetVLAD's residuals,
    NeXtVLAD's expanded frames and group assignments dominate)."""
    return batch_size * models.activation_floats(config)


def memory_estimate(config: ModelConfig, batch_size: int) -> MemoryEstimate:
    weights = models.num_parameters(config) * FLOAT_BYTES / GIB
    activations = ACTIVATION_FACTOR * activation_floats(config, batch_size) * FLOAT_BYTES / GIB
    return MemoryEstimate(weights=weights, optimizer=2 * weights, gradients=weights,
                          activations=activations, overhead=FRAMEWORK_OVERHEAD_GIB)


def memory_gib(config: ModelConfig, batch_size: int) -> float:
    return memory_estimate(config, batch_size).total


def largest_batch(config: ModelConfig, memory_available_gib: float,
                  batch_sizes: Sequence[int] = BATCH_SIZES) -> int | None:
    """The largest of `batch_sizes` whose training fits in `memory_available_gib`, or None."""
    for batch_size in sorted(batch_sizes, reverse=True):
        if memory_gib(config, batch_size) <= memory_available_gib:
            return batch_size
    return None


# --- what the cluster has ---------------------------------------------------------------

def gpu_inventory(nodes: Iterable[Mapping[str, Any]] | None = None,
                  profiles: Mapping[str, GpuProfile] = GPU_PROFILES) -> dict[str, int]:
    """GPU slots per `gpu-type` label among the alive nodes (`ray.nodes()` by default).

    A node's slots are its GPUs; a labelled node without GPUs (a simulated one in tests,
    CPUs underneath) counts one slot per CPU. Unknown types are refused here."""
    if nodes is None:
        import ray
        nodes = ray.nodes()
    inventory: dict[str, int] = {}
    for node in nodes:
        gpu_type = (node.get("Labels") or {}).get(GPU_TYPE_LABEL)
        if not node.get("Alive", True) or not gpu_type:
            continue
        profile(gpu_type, profiles)
        resources = node.get("Resources") or {}
        slots = int(resources.get("GPU", 0)) or max(1, int(resources.get("CPU", 1)))
        inventory[gpu_type] = inventory.get(gpu_type, 0) + slots
    return inventory


def cluster_has_gpus(gpu_type: str, nodes: Iterable[Mapping[str, Any]] | None = None) -> bool:
    """Whether the nodes labelled `gpu_type` have real GPUs (else they are simulated)."""
    if nodes is None:
        import ray
        nodes = ray.nodes()
    return any((node.get("Labels") or {}).get(GPU_TYPE_LABEL) == gpu_type
               and (node.get("Resources") or {}).get("GPU", 0) > 0
               for node in nodes if node.get("Alive", True))


def parse_inventory(text: str) -> dict[str, int]:
    """`1080Ti=2,1060,T4=4` → {"1080Ti": 2, "1060": 1, "T4": 4} (planning without a cluster)."""
    inventory: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, count = item.partition("=")
        profile(name)
        try:
            inventory[name] = inventory.get(name, 0) + (int(count) if count else 1)
        except ValueError:
            raise ConfigError(f"bad GPU count in {item!r}; write TYPE or TYPE=COUNT") from None
    return inventory


# --- the plan ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Placement:
    """One trial of the sweep: its model, where it runs and with which batch size."""

    model: str
    gpu_type: str  # a GPU profile name, or "cpu"
    batch_size: int
    memory_gib: float
    fp32_mib: float
    fp16_mib: float
    gflops_per_video: float

    @property
    def label_selector(self) -> dict[str, str] | None:
        return None if self.gpu_type == CPU else {GPU_TYPE_LABEL: self.gpu_type}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Placement":
        return cls(**{field.name: values[field.name] for field in dataclasses.fields(cls)})


def plan(configs: Sequence[ModelConfig], inventory: Mapping[str, int], default_batch_size: int,
         workers_per_trial: int = 1, batch_sizes: Sequence[int] = BATCH_SIZES,
         profiles: Mapping[str, GpuProfile] = GPU_PROFILES) -> list[Placement]:
    """A placement for every config, largest first; raises ConfigError naming every config
    that fits on none of the GPU types. An empty inventory means CPU only, default batch."""
    if not inventory:
        return [_placement(config, CPU, default_batch_size) for config in _largest_first(configs)]
    misfits = [f"{config.name} (needs {memory_gib(config, min(batch_sizes)):.1f} GiB at batch "
               f"{min(batch_sizes)})" for config in configs
               if all(largest_batch(config, profile(gpu, profiles).memory_gib, batch_sizes) is None
                      for gpu in inventory)]
    if misfits:
        largest = max(inventory, key=lambda gpu: profile(gpu, profiles).memory_gib)
        raise ConfigError(f"{len(misfits)} config(s) fit on no GPU type of the cluster (largest: "
                          f"{largest}, {profile(largest, profiles).memory_gib:g} GiB): " + ", ".join(misfits))
    # Longest processing time first on uniform machines: each config, biggest first, goes to the
    # type where it would finish soonest given the work that type already holds.
    busy_until = {gpu: 0.0 for gpu in inventory}
    placements = []
    for config in _largest_first(configs):
        batches = {gpu: largest_batch(config, profile(gpu, profiles).memory_gib, batch_sizes) for gpu in inventory}
        batches = {gpu: batch for gpu, batch in batches.items() if batch is not None}
        # Keep to the top two batch sizes (the paper's 160 and 80) where some type allows them;
        # smaller batches only when no type does.
        good_enough = min(sorted(batch_sizes, reverse=True)[:2][-1], max(batches.values()))
        options = []
        for gpu, batch_size in batches.items():
            if batch_size < good_enough:
                continue
            # Seconds of one step on that type, shared by the trials it can run side by side.
            seconds = 3 * models.flops_per_video(config) * batch_size / (profile(gpu, profiles).fp32_tflops * 1e12)
            share = seconds / max(1, inventory[gpu] // max(1, workers_per_trial))
            options.append((busy_until[gpu] + share, -profile(gpu, profiles).fp32_tflops,
                            -profile(gpu, profiles).memory_gib, gpu, batch_size, share))
        *_, gpu, batch_size, share = min(options)
        busy_until[gpu] += share
        placements.append(_placement(config, gpu, batch_size))
    return placements


def _largest_first(configs: Sequence[ModelConfig]) -> list[ModelConfig]:
    return sorted(configs, key=lambda config: (-memory_gib(config, max(BATCH_SIZES)),
                                               -models.flops_per_video(config), config.name))


def _placement(config: ModelConfig, gpu_type: str, batch_size: int) -> Placement:
    return Placement(model=config.name, gpu_type=gpu_type, batch_size=batch_size,
                     memory_gib=round(memory_gib(config, batch_size), 2),
                     fp32_mib=round(models.size_mib(config, fp16=False), 2),
                     fp16_mib=round(models.size_mib(config, fp16=True), 2),
                     gflops_per_video=round(models.flops_per_video(config) / 1e9, 2))


def plan_table(placements: Sequence[Placement]) -> str:
    """The plan as `--dry-run` prints it, in launch order."""
    header = (f"{'config':<12}{'fp32 MiB':>10}{'fp16 MiB':>10}{'memory GiB':>12}"
              f"{'GPU type':>10}{'batch':>7}")
    rows = [header, "-" * len(header)]
    rows += [f"{p.model:<12}{p.fp32_mib:>10.2f}{p.fp16_mib:>10.2f}{p.memory_gib:>12.2f}"
             f"{p.gpu_type:>10}{p.batch_size:>7}" for p in placements]
    per_type: dict[str, int] = {}
    for placement in placements:
        per_type[placement.gpu_type] = per_type.get(placement.gpu_type, 0) + 1
    rows.append("trials per type: " + ", ".join(f"{gpu} {count}" for gpu, count in per_type.items()))
    return "\n".join(rows)


# --- the check, after a trial ran ---------------------------------------------------------

def _node_labels() -> dict[str, dict[str, str]]:
    import ray
    return {node["NodeID"]: node.get("Labels") or {} for node in ray.nodes()}


def worker_gpu_types(run_name: str) -> list[str]:
    """The `gpu-type` labels (or "cpu") of the nodes the latest workers of a Train run ran on."""
    from raytrain8m.runtime import compat

    labels = _node_labels()
    return sorted({labels.get(node, {}).get(GPU_TYPE_LABEL, CPU) for node in compat.train_run_worker_nodes(run_name)})
