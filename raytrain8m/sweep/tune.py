"""The K×H grid on Ray Tune: one trial per model, each a data-parallel Ray Train run.

Ray's way of running Train inside Tune (Train V2): a function trainable is a light
"driver" that calls `raytrain8m.train.driver.fit`, which starts a `TensorflowTrainer` whose
workers carry the trial's `label_selector` (`gpu-type=T4`), so they land only on nodes of
the GPU type the plan chose. A failed trial is retried by Tune (`FailureConfig`) and its
`fit` resumes from the run's latest checkpoint (same run directory). MLflow: one parent run
for the sweep, and `fit`'s run per trial as its child.

Resuming after the driver died reads only the sweep's own records (`sweep/records.py`), not
Tune's experiment state: `sweep.json` (the plan and the training settings, written before
any trial starts) and each finished trial's `train/<model>/trial.json` (written when its
run is complete). A fresh Tuner runs the models without one, and each `fit` goes on from
its latest checkpoint. Tune copies its state files one after the other, so a driver killed
between two copies can leave a pair that `Tuner.restore` cannot use; the sweep never
depends on them.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from raytrain8m.models import NAME_FIELDS, ModelConfig
from raytrain8m.records import tracking
from raytrain8m.records.holdout import SPLIT_JSON, Split
from raytrain8m.runtime import localray
from raytrain8m.runtime.errors import ConfigError
from raytrain8m.runtime.gpus import GPU_PROFILES, GpuProfile
from raytrain8m.sweep.placement import (
    BATCH_SIZES,
    CPU,
    Placement,
    cluster_has_gpus,
    gpu_inventory,
    parse_grid,
    plan,
    plan_table,
    worker_gpu_types,
)
from raytrain8m.sweep.records import (
    SWEEP_JSON,
    TRAIN_DIR,
    TRIAL_JSON,
    TrialOutcome,
    finished_trials,
    read_sweep,
    write_json,
)
from raytrain8m.train.config import TrainConfig

log = logging.getLogger(__name__)

TUNE_DIR = "tune"  # Tune's experiment; a resumed sweep's are tune-resume-1, -2, …
# A trial's driver only waits on its Train run; a token of memory keeps it off the CPUs workers need.
DRIVER_RESOURCES = {"CPU": 0, "memory": 64 * 2**20}
_SPEC_KEYS = {"grid", "cluster_sizes", "hidden_sizes", "classes", "workers_per_trial", "batch_sizes", "train"}


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """What to train: the model configs and the training settings they share."""

    models: tuple[ModelConfig, ...]
    train: TrainConfig = TrainConfig()  # its `model` is replaced per trial
    workers_per_trial: int = 1
    batch_sizes: tuple[int, ...] = BATCH_SIZES  # per-worker batches to try on a GPU, largest first

    def __post_init__(self) -> None:
        if self.workers_per_trial < 1:
            raise ConfigError(f"workers_per_trial must be >= 1, got {self.workers_per_trial}")
        if not self.batch_sizes or any(not isinstance(b, int) or b < 1 for b in self.batch_sizes):
            raise ConfigError(f"batch_sizes must be positive integers, got {self.batch_sizes!r}")

    def replace(self, **changes: Any) -> "SweepSpec":
        return dataclasses.replace(self, **changes)


def load_sweep_file(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML or JSON sweep file: `grid` (names) and/or `cluster_sizes` + `hidden_sizes`,
    `classes`, `workers_per_trial`, `batch_sizes` (to try on GPUs), `train:` (TrainConfig settings)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such sweep file")
    try:
        values = yaml.safe_load(path.read_text()) or {}  # YAML reads JSON too
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML/JSON ({error})") from error
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping of {', '.join(sorted(_SPEC_KEYS))}")
    unknown = sorted(set(values) - _SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown sweep keys {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(_SPEC_KEYS))}")
    return values


def sweep_spec(grid: str | Sequence[str] = "", cluster_sizes: str | Sequence[int] = "",
               hidden_sizes: str | Sequence[int] = "", classes: int | None = None,
               workers_per_trial: int | None = None, sweep_file: str | os.PathLike | None = None,
               **train: Any) -> SweepSpec:
    """Arguments override the sweep file's values; `train` are TrainConfig fields."""
    values = load_sweep_file(sweep_file) if sweep_file else {}
    if grid or cluster_sizes or hidden_sizes:
        values.update(grid=grid, cluster_sizes=cluster_sizes, hidden_sizes=hidden_sizes)
    settings = {**(values.get("train") or {}), **{k: v for k, v in train.items() if v is not None}}
    classes = classes if classes is not None else values.get("classes")
    model_fields = {"num_classes": int(classes)} if classes is not None else {}
    models = parse_grid(values.get("grid") or "", values.get("cluster_sizes") or "",
                        values.get("hidden_sizes") or "", **model_fields)
    settings.pop("model", None)
    base = TrainConfig.from_dict(settings)
    if model_fields:
        base = base.replace(model=base.model.replace(**model_fields))
    batch_sizes = tuple(int(b) for b in values.get("batch_sizes") or BATCH_SIZES)
    return SweepSpec(tuple(models), base, int(workers_per_trial or values.get("workers_per_trial") or 1),
                     batch_sizes)


def plan_sweep(spec: SweepSpec, inventory: Mapping[str, int] | None = None,
               profiles: Mapping[str, GpuProfile] = GPU_PROFILES) -> list[Placement]:
    """The plan on this cluster (`gpu-type` labels of `ray.nodes()`) or on `inventory`."""
    inventory = gpu_inventory(profiles=profiles) if inventory is None else inventory
    return plan(spec.models, inventory, spec.train.batch_size, spec.workers_per_trial, spec.batch_sizes,
                profiles)


@dataclasses.dataclass
class SweepResult:
    out: Path
    parent_run_id: str | None
    placements: list[Placement]
    trials: list[TrialOutcome]
    wall_s: float

    @property
    def completed(self) -> list[TrialOutcome]:
        return [trial for trial in self.trials if trial.status == "TERMINATED" and not trial.error]


def trial_model(name: str, shared: ModelConfig) -> ModelConfig:
    """A grid entry's config: its name sets the family and its sizes, `shared` the rest (classes…)."""
    return ModelConfig.from_name(name, **{key: value for key, value in shared.to_dict().items()
                                          if key not in NAME_FIELDS})


def run_trial(config: dict[str, Any]) -> None:
    """Tune's function trainable: one model's Ray Train run on the GPU type of its placement."""
    from ray import tune

    from raytrain8m.train.driver import fit

    placement = Placement.from_dict(config["placement"])
    sweep = config["sweep"]
    settings = {key: value for key, value in config.items() if key not in ("placement", "sweep")}
    base = TrainConfig.from_dict(settings)
    model = trial_model(placement.model, base.model)
    train_config = base.replace(model=model, batch_size=placement.batch_size, run_name=placement.model,
                                num_workers=sweep["workers_per_trial"], use_gpu=sweep["use_gpu"][placement.model],
                                out=sweep["train_out"], tracking_uri=sweep["tracking_uri"])
    selector = placement.label_selector
    # Ray Train's run/worker records (what the dashboard's Train view shows): how the trial
    # checks where its workers really ran. Ray reads it in this process when the trainer starts.
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    split = Split.from_dict(sweep["split"]) if sweep.get("split") else None
    result = fit(train_config, parent_run_id=sweep["parent_run_id"],
                 tags={"gpu_type": placement.gpu_type, "sweep": sweep["name"]},
                 scaling_options={"label_selector": selector} if selector else None, split=split)
    node_types = worker_gpu_types(placement.model)  # where the workers really ran
    placed_ok = bool(node_types) and (selector is None or node_types == [placement.gpu_type])
    if not placed_ok:
        log.warning("%s: planned on %s, workers ran on %s", placement.model, placement.gpu_type,
                    ",".join(node_types) or "unknown nodes")
    extra = {"gpu_type": placement.gpu_type, "batch_size": placement.batch_size,
             "fp32_mib": placement.fp32_mib, "fp16_mib": placement.fp16_mib,
             "memory_gib": placement.memory_gib, "node_gpu_types": ",".join(node_types),
             "placed_ok": int(placed_ok), "checkpoints": len(result.checkpoints)}
    logger = tracking.RunLogger(result.mlflow_run_id, train_config.tracking_uri)
    logger.log_params({key: extra[key] for key in ("gpu_type", "batch_size", "memory_gib")})
    logger.set_tags({"node_gpu_types": extra["node_gpu_types"]})
    # At the run's last step: logged at step 0, the final loss would sit at the start of its curve.
    # Only what rank 0 and `fit` did not log already: a metric point is never logged twice.
    logged = set(result.metrics) | {"fp32_mib", "fp16_mib", "batch_size"}
    logger.log_metrics({key: value for key, value in extra.items() if key not in logged},
                       step=result.metrics.get("step"))
    report = {**{k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str))}, **extra,
              "run_dir": str(result.run_dir), "mlflow_run_id": result.mlflow_run_id}
    write_json(Path(result.run_dir) / TRIAL_JSON, report)  # the trial is done, whatever Tune saves
    tune.report(report)


def _tuner(train: TrainConfig, placements: Sequence[Placement], out: Path, sweep: dict[str, Any],
           max_concurrent: int, max_failures: int, name: str = TUNE_DIR):
    from ray import tune

    param_space = {**train.to_dict(),
                   "placement": tune.grid_search([placement.to_dict() for placement in placements]),
                   "sweep": sweep}
    return tune.Tuner(
        tune.with_resources(run_trial, DRIVER_RESOURCES),
        param_space=param_space,
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent,
                                    trial_dirname_creator=lambda trial: trial.config["placement"]["model"],
                                    trial_name_creator=lambda trial: trial.config["placement"]["model"]),
        run_config=tune.RunConfig(storage_path=str(out), name=name,
                                  failure_config=tune.FailureConfig(max_failures=max_failures),
                                  verbose=0),
    )


def _init_ray(out: Path) -> None:
    """Join RAY_ADDRESS, or start a local Ray with a logical CPU per core and one more: a trial
    per core at once (see default_concurrency) and a CPU for Ray Data's read tasks. On two
    cores two tiny trials overlap their start-up (processes, TensorFlow imports): the tiny
    demo's sweep took 169 s instead of 242 s one at a time."""
    localray.start(num_cpus=(os.cpu_count() or 1) + 1)
    localray.link_logs(out)  # out/ray_logs: Ray's session logs (every trial's workers)


def default_concurrency(placements: Sequence[Placement], workers_per_trial: int,
                        profiles: Mapping[str, GpuProfile] = GPU_PROFILES) -> int:
    """As many trials as the cluster holds at once: its GPU slots, and never every CPU (Ray
    Data's read tasks need one; with all CPUs held by training workers, input stalls)."""
    import ray
    cpus = int(ray.cluster_resources().get("CPU", 1))
    trials = (cpus - 1) // workers_per_trial
    inventory = gpu_inventory(profiles=profiles)
    if inventory:
        trials = min(trials, sum(slots // workers_per_trial for slots in inventory.values()))
    return max(1, min(len(placements), trials))


def run_sweep(spec: SweepSpec, out: str | os.PathLike, max_concurrent: int | None = None,
              max_failures: int = 2, placements: Sequence[Placement] | None = None,
              name: str = "", profiles: Mapping[str, GpuProfile] = GPU_PROFILES) -> SweepResult:
    """Plan (refusing configs that fit nowhere), open the parent MLflow run, run every trial."""
    from raytrain8m.data import files
    from raytrain8m.runtime.cli import check_output
    from raytrain8m.train.driver import resolve, split_data

    out = Path(out).expanduser().absolute()
    check_output(out)
    train = resolve(spec.train)  # absolute data paths: trials and workers run elsewhere
    for data in (train.train_data, train.validate_data):
        files.expand(data)  # missing or empty files: an error now, not in every trial
    if (out / SWEEP_JSON).exists() or (out / TUNE_DIR).exists():
        raise ConfigError(f"{out} already holds a sweep; resume it (--resume) or choose another --out")
    _init_ray(out)
    placements = list(placements) if placements is not None else plan_sweep(spec, profiles=profiles)
    log.info("sweep plan:\n%s", plan_table(placements))
    # one split for every trial and every later stage (zoo, ensemble): sweep.json and split.json
    train, split = split_data(train) if not train.is_split else (train, None)
    if split is not None:
        split.save(out / SPLIT_JSON)
        log.info("split: %s", split.describe())
    uri = train.tracking_uri
    name = name or out.name
    parent = tracking.start_run(f"sweep {name}", train.experiment,
                                tags={"stage": "sweep"}, uri=uri)
    if split is not None:
        parent.log_params({"holdout_files": split.holdout})
        parent.set_tags({"split": split.describe()})
    parent.log_params({"models": ",".join(p.model for p in placements), "trials": len(placements),
                       "workers_per_trial": spec.workers_per_trial, "max_steps": spec.train.max_steps,
                       "gpu_types": ",".join(sorted({p.gpu_type for p in placements}))})
    tracking.client(uri).log_text(parent.run_id, plan_table(placements), "plan.txt")
    sweep = {"name": name, "parent_run_id": parent.run_id, "tracking_uri": uri,
             "train_out": str(out / TRAIN_DIR), "workers_per_trial": spec.workers_per_trial,
             "split": split.to_dict() if split is not None else None,
             "use_gpu": {p.model: p.gpu_type != CPU and cluster_has_gpus(p.gpu_type) for p in placements}}
    max_concurrent = max_concurrent or default_concurrency(placements, spec.workers_per_trial, profiles)
    write_json(out / SWEEP_JSON, {"sweep": sweep, "placements": [p.to_dict() for p in placements],
                                  "train": train.to_dict(), "validate_data": train.validate_data,
                                  "max_concurrent": max_concurrent, "max_failures": max_failures})
    started = time.monotonic()
    try:
        results = _tuner(train, placements, out, sweep, max_concurrent, max_failures).fit()
    except BaseException:
        parent.end("FAILED")
        raise
    return _finish(results, out, placements, parent.run_id, uri, time.monotonic() - started)


def resume_sweep(out: str | os.PathLike) -> SweepResult:
    """Finish a sweep whose driver died: trials with a `trial.json` stay as they are, the
    others (unstarted, interrupted or failed) run in a fresh Tuner from their checkpoints."""
    out = Path(out).expanduser().absolute()
    saved = read_sweep(out, "no sweep to resume here")
    if "train" not in saved:
        raise ConfigError(f"{out / SWEEP_JSON} has no training settings (written by an older raytrain8m); "
                          "start the sweep again in a new --out")
    placements = [Placement.from_dict(p) for p in saved["placements"]]
    sweep = saved["sweep"]
    finished = finished_trials(saved)
    done = {outcome.model for outcome in finished}
    pending = [p for p in placements if p.model not in done]
    log.info("resuming %s: %d of %d trials finished; running %s", out, len(done), len(placements),
             ", ".join(p.model for p in pending) or "nothing")
    started = time.monotonic()
    results = []
    if pending:
        _init_ray(out)
        attempt = 1 + sum(1 for _ in out.glob(f"{TUNE_DIR}-resume-*"))
        tuner = _tuner(TrainConfig.from_dict(saved["train"]), pending, out, sweep,
                       min(saved["max_concurrent"], len(pending)), saved["max_failures"],
                       name=f"{TUNE_DIR}-resume-{attempt}")
        results = tuner.fit()
    return _finish(results, out, placements, sweep["parent_run_id"], sweep["tracking_uri"],
                   time.monotonic() - started, finished)


def _finish(results, out: Path, placements: Sequence[Placement], parent_run_id: str, uri: str,
            wall_s: float, finished: Sequence[TrialOutcome] = ()) -> SweepResult:
    by_model = {p.model: p for p in placements}
    trials = list(finished)
    for result in results:
        model = result.config["placement"]["model"]
        metrics = dict(result.metrics or {})
        trials.append(TrialOutcome(
            model=model, status="ERROR" if result.error else "TERMINATED",
            gpu_type=by_model[model].gpu_type, batch_size=by_model[model].batch_size,
            metrics=metrics, run_dir=metrics.get("run_dir", str(out / TRAIN_DIR / model)),
            mlflow_run_id=metrics.get("mlflow_run_id"), error=str(result.error) if result.error else None))
    order = {p.model: index for index, p in enumerate(placements)}
    trials.sort(key=lambda trial: order[trial.model])
    parent = tracking.RunLogger(parent_run_id, uri)
    parent.log_metrics({"trials_completed": sum(not t.error for t in trials),
                        "trials_failed": sum(bool(t.error) for t in trials), "wall_s": wall_s})
    parent.end("FAILED" if any(t.error for t in trials) or len(trials) < len(placements) else "FINISHED")
    return SweepResult(out, parent_run_id, list(placements), trials, wall_s)
