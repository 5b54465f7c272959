"""Training: one frozen config, and `fit` that runs it on Ray Train (the loop is in `trainloop`).

`TrainConfig` holds each default once; `jobs/train.py`'s flags, `train_loop_config` and a
sweep's `param_space` all derive from it. A run lives in `<out>/<run_name>/` (Ray Train V2's
experiment directory: `checkpoint_<step:08d>/` each with `model.json`, `state.json` and the
name-keyed weights); starting `fit` again with the same `out` and `run_name` resumes it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from raytrain8m import atomic, localray, settings, tracking
from raytrain8m.checkpoint import check_same_model, list_checkpoints, read_state
from raytrain8m.errors import ConfigError, Raytrain8mError
from raytrain8m.holdout import SPLIT_JSON, Split, make_split
from raytrain8m.models import ModelConfig
from raytrain8m.models.config import only_known_keys

log = logging.getLogger(__name__)

MLFLOW_JSON = "mlflow.json"  # in the run directory: the MLflow run a resumed fit logs into
ERROR_JSON = "data_error.json"  # in the run directory: a worker's own error (file, record, why)
ERROR_LOG = "error.log"  # in the run directory: the full traceback of a failed fit, Ray's wrapping included
MIXED_PRECISIONS = ("off", "bf16", "fp16")  # TrainConfig.mixed_precision (raytrain8m/mixed_precision.py)


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
    prefetch_batches: int = 2     # batches read ahead while the step runs; 0 = none
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
    crash_at_step: int = 0        # testing only: SIGKILL worker 1 once at this step

    def __post_init__(self) -> None:
        if isinstance(self.model, Mapping):
            object.__setattr__(self, "model", ModelConfig.from_dict(dict(self.model)))
        for field in ("batch_size", "max_steps", "checkpoint_every", "decay_examples", "num_workers",
                      "max_frames", "log_every"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{field} must be a positive integer, got {value!r}")
        for field in ("eval_every", "eval_batches", "max_failures", "crash_at_step", "shuffle_buffer",
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

    def resolved(self) -> "TrainConfig":
        """Defaults that depend on the environment made explicit; absolute paths for the workers."""
        data = settings.data_dir()
        return self.replace(
            train_data=_absolute(self.train_data or str(data / "train*.tfrecord")),
            validate_data=_absolute(self.validate_data or str(data / "validate*.tfrecord")),
            experiment=self.experiment or settings.experiment_name(),
            run_name=self.run_name or self.model.name,
            teacher=_absolute(self.teacher) if self.teacher else "",
            out=str(Path(self.out).expanduser().absolute()) if self.out else str(settings.runs_dir() / "train"),
            tracking_uri=self.tracking_uri or tracking.tracking_uri(),
        )

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

    def split(self) -> tuple["TrainConfig", Split]:
        """The paper's split of its globs (`holdout`): train on train + the validate files not held
        out, evaluate on the held-out ones."""
        split = make_split(self.train_data, self.validate_data, self.holdout, self.seed)
        return self.replace(train_data=list(split.train), validate_data=list(split.scoring)), split


def _shown(data: str | list[str]) -> str:
    """A glob as it is; a file list by its size (MLflow params hold 6000 characters; the list is split.json)."""
    return data if isinstance(data, str) else f"{len(data)} files (see {SPLIT_JSON})"


def _absolute(path: str | list[str]) -> str | list[str]:
    """A local path or glob made absolute (workers run in other directories); URIs as they are."""
    if not isinstance(path, str):
        return [_absolute(item) for item in path]
    return path if "://" in path else str(Path(path).expanduser().absolute())


@dataclasses.dataclass
class TrainResult:
    checkpoints: list[Path]          # every checkpoint of the run, by step
    metrics: dict[str, Any]          # the last reported metrics (step, loss, gap, …)
    run_dir: Path
    mlflow_run_id: str
    config: TrainConfig


def check_inputs(config: TrainConfig) -> None:
    """Fail before starting workers: an output that cannot be written, missing or empty files, a split
    without labels, labels beyond `num_classes`, another model's run."""
    from raytrain8m.cli import check_output
    from raytrain8m.data import files
    from raytrain8m.data.batches import iter_batches, to_model_inputs
    from raytrain8m.data.schema import DataError

    check_output(config.out)
    files.expand(config.train_data)
    if config.teacher:
        check_teacher(config)
    if config.eval_every or config.eval_batches:
        files.expand(config.validate_data)
    # Labels are checked again while reading; the first batch catches a wrong --classes at once.
    first = next(iter(iter_batches(config.train_data, config.batch_size, num_classes=config.model.num_classes,
                                   skip_corrupt=config.skip_corrupt, max_frames=config.max_frames)), None)
    if first is None:
        raise DataError(config.train_data, None, "no video to train on")
    if to_model_inputs(first, config.model.num_classes, config.max_frames)[2] is None:
        raise DataError(config.train_data, None, "videos without labels: training needs labelled splits "
                                                 "(train*, validate*; not test*)")
    if config.run_dir.exists():
        existing = list_checkpoints(config.run_dir)
        if existing:
            check_same_model(existing[-1], config.model)


def check_teacher(config: TrainConfig) -> None:
    """A teacher is an ensemble export predicting the student's classes."""
    summary = Path(config.teacher) / "ensemble.json"
    if not (Path(config.teacher) / "saved_model").is_dir() or not summary.is_file():
        raise ConfigError(f"--teacher {config.teacher}: not an ensemble export (needs saved_model/ and "
                          "ensemble.json; make one with jobs/ensemble.py or give zoo letters to jobs/distill.py)")
    classes = json.loads(summary.read_text()).get("num_classes")
    if classes != config.model.num_classes:
        raise ConfigError(f"--teacher {config.teacher} predicts {classes} classes, the student "
                          f"{config.model.num_classes}")


def _mlflow_run(config: TrainConfig, parent_run_id: str | None, tags: Mapping[str, Any] | None) -> str:
    """The run's MLflow run: the one a previous fit of this run directory made, else a new one."""
    record = config.run_dir / MLFLOW_JSON
    if config.mlflow_run_id:
        return config.mlflow_run_id
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("tracking_uri") == config.tracking_uri:
            return saved["run_id"]
    run = tracking.start_run(config.run_name, config.experiment, parent_run_id=parent_run_id,
                             tags={"stage": "train", "model": config.model.name, **dict(tags or {})},
                             uri=config.tracking_uri)
    config.run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(record, {"run_id": run.run_id, "tracking_uri": config.tracking_uri}, indent=None)
    return run.run_id


def _worker_error(error: Exception, run_dir: Path) -> Exception:
    """The error to show for a failed fit: a worker's own error (from Ray's wrapping, else from the
    record the worker left in the run directory), else `error` itself. Ray's traceback goes to
    `run_dir/error.log`, not to the terminal."""
    import traceback

    from raytrain8m.data.schema import DataError

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(run_dir / ERROR_LOG, "".join(traceback.format_exception(error)))
    except OSError:
        pass
    try:
        from raytrain8m.failures import own_error
        found = own_error(error)
    except ImportError:
        found = error if isinstance(error, Raytrain8mError) else None
    if found is not None:
        return found
    record = run_dir / ERROR_JSON
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("type") == "DataError":
            return DataError(saved.get("path"), saved.get("record"), saved.get("why", ""))
        return Raytrain8mError(saved.get("message", ""))
    return error


def write_error_record(run_dir: Path, error: Raytrain8mError, rank: int | None = None) -> None:
    """A worker's own error, for the driver (Ray may wrap it past recognition or retry it).
    `failed_workers` has one entry per worker process that failed with it during this fit: a
    retried attempt would add its own (new processes)."""
    worker = {"rank": rank, "pid": os.getpid()}
    payload = {"type": type(error).__name__, "message": str(error), "path": getattr(error, "path", None),
               "record": getattr(error, "record", None), "why": getattr(error, "why", None),
               "failed_workers": [worker]}
    try:
        previous = json.loads((run_dir / ERROR_JSON).read_text())
        payload["failed_workers"] = [entry for entry in previous.get("failed_workers", []) if entry != worker] \
            + [worker]
    except (OSError, ValueError):
        pass
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_json(run_dir / ERROR_JSON, payload, indent=None)
    except OSError as failure:
        log.warning("could not record the error in %s (%s)", run_dir, failure)


def _check_cpus_left_for_data(config: TrainConfig, resources: Mapping[str, float] | None,
                              cluster_cpus: float) -> None:
    """Workers holding every CPU starve Ray Data's read tasks: training would hang, not fail."""
    per_worker = (resources or {}).get("CPU", 0 if config.use_gpu else 1)
    if cluster_cpus - per_worker * config.num_workers < 1:
        raise ConfigError(f"{config.num_workers} worker(s) × {per_worker} CPU leave no CPU of the cluster's "
                          f"{cluster_cpus:g} for reading data; use fewer workers or "
                          "resources_per_worker={'CPU': <smaller>}")


def _trainer(config: TrainConfig, resources_per_worker: Mapping[str, float] | None,
             scaling_options: Mapping[str, Any] | None, skip_counter=None):
    """Ray (local unless RAY_ADDRESS says otherwise), the train dataset and Ray Train's data-parallel
    trainer with TensorFlow's multi-worker set-up (`compat.TensorflowBackendConfig`)."""
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

    from raytrain8m import compat, failures
    from raytrain8m.data import read_dataset
    from raytrain8m.train_worker import train_loop_per_worker

    failures.install()  # a DataError fails the run at once; faults are still retried
    _init_ray(config)
    resources = dict(resources_per_worker) if resources_per_worker else None
    _check_cpus_left_for_data(config, resources, ray.cluster_resources().get("CPU", 0))
    # The step's own inputs as tensor columns; files reshuffled each epoch, the same for a seed.
    dataset = read_dataset(config.train_data, num_classes=config.model.num_classes, max_frames=config.max_frames,
                           layout="tensors", ids=False, shuffle_files=True, seed=config.seed,
                           skip_corrupt=config.skip_corrupt, skip_counter=skip_counter)
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True  # blocks in file order, not in the order read tasks finish
    dataset.context.enable_progress_bars = False  # rank 0's progress line is the one to read
    dataset.context.print_on_execution_start = False  # else two lines at every epoch
    return compat.DataParallelTrainer(
        train_loop_per_worker,
        train_loop_config=config.to_dict(),
        backend_config=compat.TensorflowBackendConfig(),
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                     resources_per_worker=resources,
                                     **dict(scaling_options or {})),
        datasets={"train": dataset},
        dataset_config=DataConfig(execution_options=ingest),
        run_config=RunConfig(
            storage_path=config.out, name=config.run_name,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            worker_runtime_env={"env_vars": localray.console_env()},
            logging_config=LoggingConfig(log_level="WARNING"),  # rank 0's progress lines, not every report
        ),
    )


def _log_split(split: Split, config: TrainConfig, logger: tracking.RunLogger) -> None:
    """The split beside the run (`split.json`) and in its MLflow run (params, tag, artifact)."""
    split.save(config.run_dir / SPLIT_JSON)
    logger.log_params({"holdout_files": split.holdout, "choose_files": len(split.choose),
                       "report_files": len(split.report)})
    logger.set_tags({"split": split.describe()})
    from mlflow.exceptions import MlflowException

    try:
        tracking.client(config.tracking_uri).log_artifact(logger.run_id, str(config.run_dir / SPLIT_JSON))
    except (MlflowException, OSError) as error:  # tracking is a copy; the split is on disk
        log.warning("MLflow: could not log %s (%s)", SPLIT_JSON, error)


def fit(config: TrainConfig, parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None,
        resources_per_worker: Mapping[str, float] | None = None,
        scaling_options: Mapping[str, Any] | None = None, split: Split | None = None) -> TrainResult:
    """Train (or resume) one model on Ray Train and return its checkpoints and final metrics.

    `parent_run_id` makes the MLflow run a child (a sweep's trial); `resources_per_worker` and
    `scaling_options` (e.g. `label_selector`, `accelerator_type`) go to `ScalingConfig`. On any
    failure the MLflow run ends FAILED and a worker's own error is raised plainly.
    The held-out validate files (`config.holdout`, or `split` when a sweep made it) never reach
    the workers; the split is written as `<run dir>/split.json` and logged to the MLflow run.
    """
    config = config.resolved()
    if split is None and not config.is_split and config.holdout != "0":
        from raytrain8m.data.schema import DataError

        try:
            config, split = config.split()
        except DataError:
            if config.eval_every or config.eval_batches:
                raise
            # no validate files and nothing to evaluate: nothing to hold out
    check_inputs(config)
    (config.run_dir / ERROR_JSON).unlink(missing_ok=True)  # a previous attempt's
    run_id = _mlflow_run(config, parent_run_id, tags)
    config = config.replace(mlflow_run_id=run_id)
    logger = tracking.RunLogger(run_id, config.tracking_uri)
    skip_counter = None
    try:
        logger.log_params(config.params())
        if split is not None:
            _log_split(split, config, logger)
        logger.set_tags({"run_dir": str(config.run_dir)})
        logger.log_sizes(config.model)
        if config.skip_corrupt:
            from raytrain8m.data.datasource import SkipCounter
            _init_ray(config)
            skip_counter = SkipCounter.remote()
        trainer = _trainer(config, resources_per_worker, scaling_options, skip_counter)
        log.info("training %s for %d steps on %d worker(s) into %s", config.model.name, config.max_steps,
                 config.num_workers, config.run_dir)
        result = trainer.fit()
    except BaseException as error:  # Ray wraps worker errors; show ours plainly. Never leave RUNNING.
        _log_skipped(skip_counter, logger)
        logger.end("FAILED")
        if not isinstance(error, Exception):
            raise
        cause = _worker_error(error, config.run_dir)
        if cause is not error:
            raise cause from None
        raise
    checkpoints = list_checkpoints(config.run_dir)
    for path in checkpoints:
        logger.log_checkpoint(path, read_state(path)["step"])
    skipped = _log_skipped(skip_counter, logger)
    logger.end("FINISHED")
    metrics = dict(result.metrics or {})
    if checkpoints:
        metrics = {**read_state(checkpoints[-1]).get("metrics", {}), **metrics}
    if skipped is not None:
        metrics["skipped_records"] = skipped
    return TrainResult(checkpoints, metrics, config.run_dir, run_id, config)


def _init_ray(config: TrainConfig) -> None:
    """Ray, local unless RAY_ADDRESS says otherwise (nothing to do when it is up already)."""
    # Locally, logical CPUs beyond the cores leave room for Ray Data's read tasks.
    localray.start(num_cpus=max(os.cpu_count() or 1, config.num_workers + 2))
    localray.link_logs(config.run_dir)  # run_dir/ray_logs: Ray's session logs (the workers' full output)


def _log_skipped(skip_counter, logger) -> int | None:
    """The corrupt records the run's readers left out, to MLflow and the log; None without skip_corrupt."""
    if skip_counter is None:
        return None
    import ray

    try:
        skipped, by_file = ray.get(skip_counter.total.remote(), timeout=30)
    except Exception as error:  # the count is a report; never hide the run's own outcome
        log.warning("could not read the skipped-record count (%s)", error)
        return None
    finally:
        ray.kill(skip_counter)
    logger.log_metrics({"skipped_records": skipped})
    if skipped:
        log.warning("skip_corrupt: %d corrupt records left out (%s)", skipped,
                    ", ".join(f"{path}: {count}" for path, count in sorted(by_file.items())))
    return skipped
