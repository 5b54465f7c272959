"""`TrainConfig`: every training setting with its one default. Pure: no I/O, no Ray, no MLflow,
no TensorFlow, so the loop, the sweep's plan and `--help` read it without importing the driver.

`jobs/train.py`'s flags, `train_loop_config` and a sweep's `param_space` all derive from it;
`driver.resolve` fills in what depends on the environment (data and run directories, MLflow).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from raytrain8m.models import ModelConfig
from raytrain8m.models.config import only_known_keys
from raytrain8m.records.holdout import SPLIT_JSON
from raytrain8m.runtime.errors import ConfigError

MIXED_PRECISIONS = ("off", "bf16", "fp16")  # TrainConfig.mixed_precision (raytrain8m/train/mixed_precision.py)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every training setting with its one default (the paper's commands where it has one)."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train_data: str = ""          # glob or URI; "" = <RAYTRAIN8M_DATA>/train*.tfrecord (a file list once split)
    validate_data: str = ""       # "" = <RAYTRAIN8M_DATA>/validate*.tfrecord (the held-out files once split)
    holdout: str = "auto"         # validate files held out: auto (the paper's 60 of 3844, scaled), 0 or N
    batch_size: int = 80          # per worker (the paper: 80–160 per GPU)
    learning_rate: float = 1e-4
    decay_rate: float = 0.8       # × every `decay_examples` examples (staircase)
    decay_examples: int = 4_000_000
    clip_norm: float = 1.0        # on the global norm of the all-reduced gradients
    moe_l2: float = 1e-6
    max_steps: int = 200_000      # the paper: 200k steps, 2–3 days a model on one 1080Ti
    checkpoint_every: int = 5000  # all kept: averaging needs them
    eval_every: int = 10_000      # 0 = only at the end
    eval_batches: int = 50        # validate batches of 256 per evaluation; 0 = the whole split
    num_workers: int = 1
    use_gpu: bool = False
    seed: int = 0
    max_frames: int = 300
    max_failures: int = 3         # worker-group restarts from the latest checkpoint
    log_every: int = 100          # progress line and MLflow loss every N steps
    print_every: int = 0          # the console's progress line every N steps instead (and the last); 0 = log_every
    shuffle_buffer: int = 512     # videos in each worker's local shuffle buffer; 0 = no row shuffle
    prefetch_batches: int = 2     # blocks Ray Data fetches, and batches made, ahead of the step; 0 = none
    jit_compile: bool = False     # XLA-compile the model's forward and backward (bench/train_step.py)
    mixed_precision: str = "off"  # off, bf16 or fp16: the model's matmuls in that dtype (fp16: loss scaling)
    ema_decay: float = 0.0        # > 0: keep a moving average of the weights (saved as ema/… in checkpoints)
    teacher: str = ""             # an ensemble export DIR (DIR/saved_model): distil from its predictions
    distill_lambda: float = 1.0   # with a teacher: targets = λ · teacher + (1 − λ) · labels
    experiment: str = ""          # MLflow experiment; "" = MLFLOW_EXPERIMENT_NAME or raytrain8m
    run_name: str = ""            # "" = the model's name, e.g. K16-H256
    out: str = ""                 # "" = <RAYTRAIN8M_RUNS>/train
    mlflow_run_id: str = ""       # set by `fit`: the run rank 0 logs into
    tracking_uri: str = ""        # set by `fit`: the MLflow store workers log to
    skip_corrupt: bool = False    # leave out corrupt records (counted: MLflow `skipped_records`)

    def __post_init__(self) -> None:
        if isinstance(self.model, Mapping):
            object.__setattr__(self, "model", ModelConfig.from_dict(dict(self.model)))
        for field in ("batch_size", "max_steps", "checkpoint_every", "decay_examples", "num_workers",
                      "max_frames", "log_every"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{field} must be a positive integer, got {value!r}")
        for field in ("eval_every", "eval_batches", "max_failures", "shuffle_buffer",
                      "prefetch_batches", "print_every"):
            if getattr(self, field) < 0:
                raise ConfigError(f"{field} must be >= 0, got {getattr(self, field)!r}")
        for field in ("learning_rate", "decay_rate", "clip_norm"):
            if not getattr(self, field) > 0:
                raise ConfigError(f"{field} must be > 0, got {getattr(self, field)!r}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1) (0 = off), got {self.ema_decay!r}")
        if not 0 <= self.distill_lambda <= 1:
            raise ConfigError(f"distill_lambda must be in [0, 1], got {self.distill_lambda!r}")
        if self.moe_l2 < 0:
            raise ConfigError(f"moe_l2 must be >= 0, got {self.moe_l2!r}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ConfigError(f"mixed_precision must be one of {', '.join(MIXED_PRECISIONS)}, "
                              f"got {self.mixed_precision!r}")
        holdout = str(self.holdout).strip().lower()
        if holdout != "auto" and not (holdout.isdigit()):
            raise ConfigError(f"holdout must be auto, 0 or a number of validate files, got {self.holdout!r}")
        object.__setattr__(self, "holdout", holdout)

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_workers

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        return cls(**only_known_keys(cls, values, "train config"))

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.run_name

    def params(self) -> dict[str, Any]:
        """What MLflow records as the run's params."""
        return {"model": self.model.name, "model_type": self.model.family,
                "cluster_size": self.model.cluster_size, "hidden_size": self.model.hidden_size,
                "num_classes": self.model.num_classes, "num_mixtures": self.model.num_mixtures,
                "iterations": self.model.iterations, "batch_size": self.batch_size,
                "global_batch_size": self.global_batch_size, "learning_rate": self.learning_rate,
                "decay_rate": self.decay_rate, "decay_examples": self.decay_examples,
                "clip_norm": self.clip_norm, "moe_l2": self.moe_l2, "max_steps": self.max_steps,
                "checkpoint_every": self.checkpoint_every, "eval_every": self.eval_every,
                "num_workers": self.num_workers, "use_gpu": self.use_gpu, "seed": self.seed,
                "max_frames": self.max_frames, "ema_decay": self.ema_decay,
                "mixed_precision": self.mixed_precision, "jit_compile": self.jit_compile,
                "teacher": self.teacher, "distill_lambda": self.distill_lambda,
                "train_data": _shown(self.train_data), "validate_data": _shown(self.validate_data),
                "holdout": self.holdout, "skip_corrupt": self.skip_corrupt}

    @property
    def is_split(self) -> bool:
        """Its data are the file lists of a holdout split (not globs)."""
        return not isinstance(self.train_data, str)


def _shown(data: str | list[str]) -> str:
    """A glob as it is; a file list by its size (MLflow params hold 6000 characters; the list is split.json)."""
    return data if isinstance(data, str) else f"{len(data)} files (see {SPLIT_JSON})"
