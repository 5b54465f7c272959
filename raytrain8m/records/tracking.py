"""MLflow helpers: one store, one experiment, one run per trained model (child of a sweep's run).

Only the driver and rank 0 log. A run is addressed by its id (`RunLogger.attach`), so the
driver can create it, a worker can log into it, and a sweep can parent it. Checkpoint
locations are tags `checkpoint/<step:08d>` = path, so `checkpoint_locations(run_id)`
gives back every checkpoint a run wrote. MLflow (≈3 s to import) is imported where it is
first used, so that a command's `--help` and flag errors never wait for it.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from raytrain8m.models import ModelConfig
from raytrain8m.runtime import settings

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

CHECKPOINT_TAG = "checkpoint/"
_PARAM_MAX = 6000  # MLflow's limit on a param value


def _tracking_errors() -> tuple[type[BaseException], ...]:
    """What a tracking call raises that we warn about instead of failing the stage."""
    from mlflow.exceptions import MlflowException

    return MlflowException, OSError


def tracking_uri(uri: str | None = None) -> str:
    """The store to use: `uri`, else settings; a local SQLite file gets its directory made."""
    uri = uri or settings.mlflow_tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return uri


def client(uri: str | None = None) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def get_or_create_experiment(name: str | None = None, uri: str | None = None) -> str:
    """The experiment's id, creating it (artifacts under `<runs>/mlartifacts` locally) if new."""
    from mlflow.exceptions import MlflowException

    name = name or settings.experiment_name()
    mlflow_client = client(uri)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(name, artifact_location=settings.mlflow_artifact_root())
    except MlflowException:  # created meanwhile by another process
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


class RunLogger:
    """Logs into one MLflow run; tracking failures are warned about, never raised mid-training."""

    def __init__(self, run_id: str, uri: str | None = None):
        self.run_id = run_id
        self.uri = tracking_uri(uri)
        self.client = client(self.uri)

    @classmethod
    def attach(cls, run_id: str, uri: str | None = None) -> "RunLogger":
        return cls(run_id, uri)

    def _safely(self, what: str, call, *args, **kwargs) -> None:
        try:
            call(*args, **kwargs)
        except _tracking_errors() as error:
            log.warning("MLflow: could not %s for run %s (%s)", what, self.run_id, error)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        entries = [Param(key, str(value)[:_PARAM_MAX]) for key, value in params.items()]
        self._safely("log params", self.client.log_batch, self.run_id, params=entries)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(key, float(value), now, int(step or 0)) for key, value in metrics.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool)]
        if entries:
            self._safely("log metrics", self.client.log_batch, self.run_id, metrics=entries)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        entries = [RunTag(key, str(value)) for key, value in tags.items()]
        self._safely("set tags", self.client.log_batch, self.run_id, tags=entries)

    def log_sizes(self, config: ModelConfig) -> None:
        """fp32/fp16/int8 MiB and parameter count, from the variables the model really builds."""
        from raytrain8m.models import num_parameters, size_mib

        self.log_metrics({"fp32_mib": size_mib(config, fp16=False), "fp16_mib": size_mib(config, fp16=True),
                          "int8_mib": size_mib(config.replace(fp16=False, int8="affine")),
                          "parameters": num_parameters(config)})

    def log_checkpoint(self, path: str | Path, step: int) -> None:
        self.set_tags({f"{CHECKPOINT_TAG}{int(step):08d}": str(path)})

    def end(self, status: str = "FINISHED") -> None:
        self._safely("end the run", self.client.set_terminated, self.run_id, status)


def start_run(run_name: str, experiment: str | None = None, parent_run_id: str | None = None,
              tags: Mapping[str, Any] | None = None, uri: str | None = None) -> RunLogger:
    """Create a run (a child of `parent_run_id` when given) and return its logger."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    experiment_id = get_or_create_experiment(experiment, uri)
    all_tags = {MLFLOW_RUN_NAME: run_name, **{key: str(value) for key, value in (tags or {}).items()}}
    if parent_run_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    run = client(uri).create_run(experiment_id, run_name=run_name, tags=all_tags)
    return RunLogger(run.info.run_id, uri)


def log_run(run_name: str, params: Mapping[str, Any], metrics: Mapping[str, Any],
            series: Mapping[str, list[tuple[int, float]]] | None = None,
            tags: Mapping[str, str] | None = None) -> str | None:
    """One finished run for a stage (evaluate, average, ensemble, infer): its params, metrics and
    metric series. Tracking failures are warned about, never raised: the stage's result stands."""
    try:
        run = start_run(run_name, tags=tags)
    except _tracking_errors() as error:
        log.warning("MLflow: could not start run %r (%s); results are still returned", run_name, error)
        return None
    run.log_params(params)
    run.log_metrics(metrics)
    for key, points in (series or {}).items():
        for step, value in points:
            run.log_metrics({key: value}, step=step)
    run.end()
    return run.run_id


ENSEMBLE_MODEL = "raytrain8m-ensemble"  # the Model Registry name every exported ensemble is a version of


def log_artifacts(run_id: str, path: str | Path, artifact_path: str, uri: str | None = None) -> bool:
    """Copy a file or directory into a run's artifacts (a user elsewhere can download it);
    a tracking failure is warned about, never raised."""
    path = Path(path)
    try:
        if path.is_dir():
            client(uri).log_artifacts(run_id, str(path), artifact_path)
        else:
            client(uri).log_artifact(run_id, str(path), artifact_path)
    except _tracking_errors() as error:
        log.warning("MLflow: could not log %s for run %s (%s)", path, run_id, error)
        return False
    return True


def log_chosen_checkpoint(run_id: str, checkpoint: str | Path, how: str, uri: str | None = None) -> None:
    """A model's chosen checkpoint (`how`: averaged or best single) as artifacts of its train run,
    under `chosen_checkpoint/`, and tags saying which one it is."""
    if log_artifacts(run_id, checkpoint, "chosen_checkpoint", uri):
        RunLogger(run_id, uri).set_tags({"chosen_checkpoint": str(checkpoint), "chosen_checkpoint/kind": how})


def register_ensemble(run_id: str, export_dir: str | Path, tags: Mapping[str, Any],
                      name: str = ENSEMBLE_MODEL, uri: str | None = None) -> str | None:
    """Log an exported ensemble as the run's `ensemble/` artifacts and register them as a new
    version of `name` in the Model Registry, with `tags` (members, weights, sizes, GAP).
    Returns the version, or None when tracking failed (warned about, the export stands)."""
    if not log_artifacts(run_id, export_dir, "ensemble", uri):
        return None
    from mlflow.exceptions import MlflowException

    mlflow_client = client(uri)
    try:
        try:
            mlflow_client.create_registered_model(name, description="raytrain8m ensembles: one TF graph "
                                                  "under a size budget (MetaGraph + SavedModel)")
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{mlflow_client.get_run(run_id).info.artifact_uri.rstrip('/')}/ensemble"
        version = mlflow_client.create_model_version(name, source, run_id=run_id,
                                                     tags={key: str(value) for key, value in tags.items()})
    except _tracking_errors() as error:
        log.warning("MLflow: could not register %s from run %s (%s)", name, run_id, error)
        return None
    RunLogger(run_id, uri).set_tags({"registered_model": f"{name}/{version.version}"})
    return str(version.version)


def find_runs(experiment: str | None = None, filter_string: str = "", uri: str | None = None,
              max_results: int = 1000) -> list[Run]:
    """Runs of an experiment matching an MLflow filter (e.g. `params.cluster_size = '16'`), newest first."""
    mlflow_client = client(uri)
    found = mlflow_client.get_experiment_by_name(experiment or settings.experiment_name())
    if found is None:
        return []
    return list(mlflow_client.search_runs([found.experiment_id], filter_string=filter_string,
                                          max_results=max_results, order_by=["attributes.start_time DESC"]))


def child_runs(parent_run_id: str, experiment: str | None = None, uri: str | None = None) -> list[Run]:
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    return find_runs(experiment, f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'", uri)


def checkpoint_locations(run_id: str, uri: str | None = None) -> dict[int, str]:
    """{step: checkpoint path} that a run logged."""
    tags = client(uri).get_run(run_id).data.tags
    return {int(key[len(CHECKPOINT_TAG):]): value for key, value in sorted(tags.items())
            if key.startswith(CHECKPOINT_TAG)}
