"""Training's driver: `fit` runs a `TrainConfig` (train/config.py) on Ray Train (the loop is in
`train/loop.py`) with its MLflow run. A run lives in `<out>/<run_name>/` (Ray Train V2's
experiment directory: `checkpoint_<step:08d>/` each with `model.json`, `state.json` and the
name-keyed weights); starting `fit` again with the same `out` and `run_name` resumes it.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from raytrain8m.records import tracking
from raytrain8m.records.checkpoint import check_same_model, list_checkpoints, read_state
from raytrain8m.records.holdout import SPLIT_JSON, Split, make_split
from raytrain8m.runtime import atomic, localray, settings
from raytrain8m.runtime.errors import ConfigError
from raytrain8m.train.config import TrainConfig

log = logging.getLogger(__name__)

RESUME_MODES = ("auto", "new", "continue")  # fit's `resume`
MLFLOW_JSON = "mlflow.json"  # in the run directory: the MLflow run a resumed fit logs into
def resolve(config: TrainConfig) -> TrainConfig:
    """Defaults that depend on the environment made explicit; absolute paths for the workers."""
    data = settings.data_dir()
    return config.replace(
        train_data=_absolute(config.train_data or str(data / "train*.tfrecord")),
        validate_data=_absolute(config.validate_data or str(data / "validate*.tfrecord")),
        experiment=config.experiment or settings.experiment_name(),
        run_name=config.run_name or config.model.name,
        teacher=_absolute(config.teacher) if config.teacher else "",
        out=str(Path(config.out).expanduser().absolute()) if config.out else str(settings.runs_dir() / "train"),
        tracking_uri=config.tracking_uri or tracking.tracking_uri(),
    )


def split_data(config: TrainConfig) -> tuple[TrainConfig, Split]:
    """The paper's split of its globs (`holdout`): train on train + the validate files not held
    out, evaluate on the held-out ones."""
    split = make_split(config.train_data, config.validate_data, config.holdout, config.seed)
    return config.replace(train_data=list(split.train), validate_data=list(split.scoring)), split


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


def check_resume(config: TrainConfig, resume: str) -> None:
    """Refuse to start over a run's checkpoints (`resume="new"`) or to continue a run that has
    none (`"continue"`); `"auto"` takes either."""
    if resume not in RESUME_MODES:
        raise ConfigError(f"resume must be one of {', '.join(RESUME_MODES)}, got {resume!r}")
    existing = list_checkpoints(config.run_dir) if config.run_dir.exists() else []
    if existing and resume == "new":
        raise ConfigError(f"{config.run_dir} already holds {len(existing)} checkpoint(s); pass --resume to "
                          "continue it or --run-name/--out for a new run")
    if not existing and resume == "continue":
        raise ConfigError(f"--resume: {config.run_dir} holds no checkpoint")


def check_inputs(config: TrainConfig) -> None:
    """Fail before starting workers: an output that cannot be written, missing or empty files, a split
    without labels, labels beyond `num_classes`, another model's run."""
    from raytrain8m.data import files
    from raytrain8m.data.batches import iter_batches, to_model_inputs
    from raytrain8m.data.schema import DataError
    from raytrain8m.runtime.cli import check_output

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


def _check_cpus_left_for_data(config: TrainConfig, resources: Mapping[str, float] | None,
                              cluster_cpus: float) -> None:
    """Workers holding every CPU starve Ray Data's read tasks: training would hang, not fail."""
    per_worker = (resources or {}).get("CPU", 0 if config.use_gpu else 1)
    if cluster_cpus - per_worker * config.num_workers < 1:
        raise ConfigError(f"{config.num_workers} worker(s) × {per_worker} CPU leave no CPU of the cluster's "
                          f"{cluster_cpus:g} for reading data; use fewer workers or "
                          "resources_per_worker={'CPU': <smaller>}")


DATA_STORE_FRACTION = 0.25  # of the object store, for a training run's read-ahead (see train_dataset)


def train_dataset(config: TrainConfig, skip_counter=None):
    """The Ray Dataset a training run's workers read and the execution options it runs under:
    the step's own inputs as tensor columns, one read task per file, files reshuffled each epoch
    (the same way for a seed), blocks of at most 32 MiB kept in file order."""
    from ray.train import DataConfig

    from raytrain8m.data import read_dataset
    from raytrain8m.data.datasource import BLOCK_BYTES
    from raytrain8m.runtime import compat

    dataset = read_dataset(config.train_data, num_classes=config.model.num_classes, max_frames=config.max_frames,
                           layout="tensors", ids=False, shuffle_files=True, seed=config.seed, task_per_file=True,
                           skip_corrupt=config.skip_corrupt, skip_counter=skip_counter)
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True  # blocks in file order, not in the order read tasks finish
    dataset.context.enable_progress_bars = False  # rank 0's progress line is the one to read
    dataset.context.print_on_execution_start = False  # else two lines at every epoch
    compat.pace_data_scheduling(dataset.context)  # else its loop spins while blocks wait for the step
    # A quarter of the object store for Ray Data's read-ahead (its default is half): the blocks
    # in streaming_split's coordinator and in the workers' prefetch are not counted in that
    # budget, and with half they overflowed a 1 GiB store into spilling (bench/train_step.py).
    dataset.context.override_object_store_memory_limit_fraction = DATA_STORE_FRACTION
    # Blocks of BLOCK_BYTES, as the read tasks yield them (Ray Data would merge them up to its
    # 128 MiB): the read-ahead in flight is counted in blocks (datasource.BLOCK_BYTES).
    dataset.context.target_max_block_size = BLOCK_BYTES
    return dataset, ingest


def _trainer(config: TrainConfig, resources_per_worker: Mapping[str, float] | None,
             scaling_options: Mapping[str, Any] | None, skip_counter=None):
    """The train dataset and Ray Train's data-parallel trainer with TensorFlow's multi-worker
    set-up (`compat.TensorflowBackendConfig`), on the Ray `fit` started."""
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

    from raytrain8m.runtime import compat
    from raytrain8m.train import failures
    from raytrain8m.train.worker import train_loop_per_worker

    failures.install()  # a DataError fails the run at once; faults are still retried
    resources = dict(resources_per_worker) if resources_per_worker else None
    _check_cpus_left_for_data(config, resources, ray.cluster_resources().get("CPU", 0))
    dataset, ingest = train_dataset(config, skip_counter)
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
        scaling_options: Mapping[str, Any] | None = None, split: Split | None = None,
        resume: str = "auto") -> TrainResult:
    """Train (or resume) one model on Ray Train and return its checkpoints and final metrics.

    `parent_run_id` makes the MLflow run a child (a sweep's trial); `resources_per_worker` and
    `scaling_options` (e.g. `label_selector`, `accelerator_type`) go to `ScalingConfig`. On any
    failure the MLflow run ends FAILED and a worker's own error is raised plainly.
    The held-out validate files (`config.holdout`, or `split` when a sweep made it) never reach
    the workers; the split is written as `<run dir>/split.json` and logged to the MLflow run.
    `resume`: "auto" continues from the run directory's newest complete checkpoint if there is
    one (a sweep's retried trial), "new" refuses a run directory that holds checkpoints,
    "continue" one that holds none (`jobs/train.py` without and with `--resume`).
    """
    from raytrain8m.train.failures import ERROR_JSON, worker_error

    config = resolve(config)
    if split is None and not config.is_split and config.holdout != "0":
        from raytrain8m.data.schema import DataError

        try:
            config, split = split_data(config)
        except DataError:
            if config.eval_every or config.eval_batches:
                raise
            # no validate files and nothing to evaluate: nothing to hold out
    check_resume(config, resume)
    check_inputs(config)
    (config.run_dir / ERROR_JSON).unlink(missing_ok=True)  # a previous attempt's
    # The MLflow run (seconds on a new store, whose tables it creates) is made in a thread while
    # Ray starts: Ray's start is mostly its own processes starting, MLflow's this process's Python.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="raytrain8m-mlflow") as pool:
        tracked = pool.submit(_tracked_run, config, parent_run_id, tags, split)
        try:
            _init_ray(config)
        except BaseException:
            _end_failed(tracked)
            raise
        logger = tracked.result()
    config = config.replace(mlflow_run_id=logger.run_id)
    skip_counter = None
    try:
        if config.skip_corrupt:
            from raytrain8m.data.datasource import SkipCounter
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
        cause = worker_error(error, config.run_dir)
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
    return TrainResult(checkpoints, metrics, config.run_dir, logger.run_id, config)


def _tracked_run(config: TrainConfig, parent_run_id: str | None, tags: Mapping[str, Any] | None,
                 split: Split | None) -> tracking.RunLogger:
    """The run's MLflow run with its params, split, run directory and sizes (ended FAILED if
    writing the split fails)."""
    config = config.replace(mlflow_run_id=_mlflow_run(config, parent_run_id, tags))
    logger = tracking.RunLogger(config.mlflow_run_id, config.tracking_uri)
    try:
        logger.log_params(config.params())
        if split is not None:
            _log_split(split, config, logger)
        logger.set_tags({"run_dir": str(config.run_dir)})
        logger.log_sizes(config.model)
    except BaseException:
        logger.end("FAILED")
        raise
    return logger


def _end_failed(tracked: concurrent.futures.Future) -> None:
    """End the MLflow run `_tracked_run` made FAILED (nothing to end if it could not make one)."""
    try:
        tracked.result().end("FAILED")
    except Exception as error:
        log.debug("no MLflow run to end (%s)", error)


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
