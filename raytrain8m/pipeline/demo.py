"""The whole pipeline on the embedded default: synthesise → sweep → zoo (averaged
checkpoints) → [distilled students join the zoo] → fp16 → ensemble searched under a budget
(members at fp16, or each at fp16 or int8) → export → infer → report.

Local Ray, synthetic data in the official format, MLflow in `runs/mlflow.db`. Data is
kept between runs (same scale, same bytes) and reused; the runs are made anew.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from raytrain8m.models import ModelConfig
from raytrain8m.runtime import atomic, settings
from raytrain8m.runtime.errors import ConfigError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DemoScale:
    """One size of the demo: the data, the grid and how long each model trains."""

    videos: int
    classes: int
    max_frames: int
    grid: tuple[str, ...]
    max_steps: int
    checkpoint_every: int
    batch_size: int
    shards: int = 4
    learning_rate: float = 1e-3
    decay_examples: int = 4000  # the paper decays ×0.8 every 4M examples; scaled to the demo's run
    precision: str = "fp16"     # the ensemble search's members: fp16 (the paper), int8, or auto (each its best)
    students: tuple[str, ...] = ()  # distilled from the zoo's best ensemble under the budget; they join the zoo
    distill_lambda: float = 1.0


SCALES: dict[str, DemoScale] = {
    # CI and the test suite: seconds per model
    "tiny": DemoScale(videos=240, classes=20, max_frames=12, grid=("K4-H16", "K4-H32"),  # one round of 2 trials
                      max_steps=24, checkpoint_every=6, batch_size=8, shards=2, learning_rate=3e-3,
                      precision="auto"),
    # `make demo`: a few minutes on 2 CPU cores
    "default": DemoScale(videos=1600, classes=40, max_frames=30,
                         grid=("K8-H32", "K8-H64", "K16-H32", "K16-H64"),
                         max_steps=600, checkpoint_every=60, batch_size=32),
    # `make demo DEMO_SCALE=large`: a bigger grid, tens of minutes on CPU, quick on a GPU node;
    # beyond the paper: a student distilled from the zoo's best ensemble, members at fp16 or int8
    "large": DemoScale(videos=8000, classes=200, max_frames=100,
                       grid=("K8-H128", "K16-H128", "K16-H256", "K32-H128", "K32-H256", "K64-H256"),
                       max_steps=3000, checkpoint_every=300, batch_size=64, decay_examples=40000,
                       precision="auto", students=("K16-H64",), distill_lambda=0.5),
}

DEMO_EXPERIMENT = "raytrain8m-demo"
LOG_FILE = "demo.log"  # in <runs>/demo: the driver's full log

# The paper's budget (1024 MiB) over its largest fp16 member (Y, 381.40 MiB): the demo's budget
# keeps that ratio to its own largest model, so 2–3 members fit as in Table 2.
BUDGET_RATIO = 1024 / 381.40


def scale(name: str, beyond: bool = False) -> DemoScale:
    """The named scale; `beyond` adds what goes beyond the paper to it: the ensemble search at
    `auto` (each member at fp16 or int8) and, unless the scale names its own, one distilled
    student (the grid's smallest K at half its smallest H, a model the grid does not train)."""
    try:
        chosen = SCALES[name]
    except KeyError:
        raise ConfigError(f"unknown DEMO_SCALE {name!r}; choose one of {', '.join(SCALES)}") from None
    if not beyond:
        return chosen
    models = [ModelConfig.from_name(model) for model in chosen.grid]
    student = f"K{min(m.cluster_size for m in models)}-H{max(1, min(m.hidden_size for m in models) // 2)}"
    return dataclasses.replace(chosen, precision="auto", students=chosen.students or (student,),
                               distill_lambda=chosen.distill_lambda if chosen.students else 0.7)


def synthesise(demo: DemoScale, data_dir: Path) -> dict[str, Any]:
    """Make the demo's data, or reuse it when the same arguments already wrote it."""
    from raytrain8m.data.synthetic import generate

    wanted = {"videos": demo.videos, "classes": demo.classes, "max_frames": demo.max_frames, "seed": 0}
    record = data_dir / "synthetic.json"
    if record.is_file():
        summary = json.loads(record.read_text())
        if all(summary.get(key) == value for key, value in wanted.items()):
            log.info("reusing the synthetic data in %s (same scale and seed)", data_dir)
            return {**summary, "reused": True}
        log.info("%s holds data of another scale; writing it anew", data_dir)
        shutil.rmtree(data_dir)
    summary = generate(str(data_dir), shards=demo.shards, **wanted)
    return {**summary, "reused": False}


def run_demo(scale_name: str = "default", data_root: str | Path = "data", runs_root: str | Path = "runs",
             max_concurrent: int | None = None, beyond: bool = False) -> dict[str, Any]:
    """Run every stage; return what the report shows (also written to `<runs>/demo/summary.json`).
    The driver's full log goes to `<runs>/demo/demo.log`, Ray's (workers, raylet) stay in its
    session directory, linked as `<runs>/demo/ray_logs`."""
    demo = scale(scale_name, beyond)
    # One experiment for every stage (sweep, trains, zoo, ensemble): stages that log on their
    # own (ensemble, infer) read it from the environment.
    os.environ["MLFLOW_EXPERIMENT_NAME"] = settings.experiment_name() \
        if os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() else DEMO_EXPERIMENT
    started = time.monotonic()
    out = Path(runs_root).absolute() / "demo"
    if out.exists():
        log.info("replacing the previous demo runs in %s", out)
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with _log_to_file(out / LOG_FILE):
        return _run(demo, scale_name, data_root, out, max_concurrent, started)


@contextlib.contextmanager
def _log_to_file(path: Path) -> Iterator[None]:
    """Every log line of the demo's driver, DEBUG up (details the console leaves out), also in
    `path`; the console's handlers keep their level (INFO when they had none)."""
    root, package = logging.getLogger(), logging.getLogger("raytrain8m")
    saved = [(handler, handler.level) for handler in root.handlers]
    level = package.level
    for handler, _ in saved:  # DEBUG records now reach the root: not to the console
        if handler.level == logging.NOTSET and not settings.verbose():
            handler.setLevel(max(root.level, logging.INFO))
    file_handler = logging.FileHandler(path)
    file_handler.setLevel(logging.DEBUG)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(file_handler)
    package.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(file_handler)
        file_handler.close()
        package.setLevel(level)
        for handler, previous in saved:
            handler.setLevel(previous)


def _run(demo: DemoScale, scale_name: str, data_root: str | Path, out: Path, max_concurrent: int | None,
         started: float) -> dict[str, Any]:
    from raytrain8m.compose.compress import compress_checkpoint
    from raytrain8m.compose.ensemble import make_ensemble
    from raytrain8m.compose.infer import infer
    from raytrain8m.pipeline.report import write_report
    from raytrain8m.pipeline.stages import TEACHER_DIR, distill_stage, zoo_of_sweep
    from raytrain8m.runtime import localray
    from raytrain8m.sweep import tune as sweep
    from raytrain8m.sweep.records import scoring_data
    from raytrain8m.train.config import TrainConfig

    timings: dict[str, float] = {}

    def lap(stage: str, since: float) -> float:
        timings[stage] = round(time.monotonic() - since, 1)
        log.info("%s done in %.0f s", stage, timings[stage])
        return time.monotonic()

    data_dir = Path(data_root).absolute() / f"demo-{scale_name}"
    mark = time.monotonic()
    data = synthesise(demo, data_dir)
    mark = lap("synthesise", mark)

    train_glob, validate_glob, test_glob = (str(data_dir / f"{split}*.tfrecord")
                                            for split in ("train", "validate", "test"))
    models = tuple(ModelConfig.from_name(name, num_classes=demo.classes, iterations=demo.max_frames)
                   for name in demo.grid)
    # A trial takes K and H from its grid name and every other model field from `train.model`.
    train = TrainConfig(model=models[0], train_data=train_glob, validate_data=validate_glob, batch_size=demo.batch_size,
                        learning_rate=demo.learning_rate, decay_examples=demo.decay_examples,
                        max_steps=demo.max_steps,
                        checkpoint_every=demo.checkpoint_every, eval_every=0, eval_batches=0,
                        max_frames=demo.max_frames, log_every=max(1, demo.checkpoint_every // 4),
                        print_every=max(1, demo.max_steps // 4),  # the console: 4 lines a model
                        experiment=settings.experiment_name())
    spec = sweep.SweepSpec(models, train)
    result = sweep.run_sweep(spec, out / "sweep", max_concurrent=max_concurrent, max_failures=1, name="demo")
    localray.link_logs(out)  # Ray's full logs (workers, raylet), also when a trial failed
    failed = [trial.model for trial in result.trials if trial.error]
    if failed or not result.completed:
        raise ConfigError(f"demo sweep: trials failed: {', '.join(failed) or 'all'}; see the log above")
    mark = lap("sweep", mark)

    zoo = zoo_of_sweep(result)
    # the sweep's holdout: choices on one half of it (compression, the ensemble), reported GAPs on the other
    choose, report, _ = scoring_data(out / "sweep")
    mark = lap("zoo (evaluate + average checkpoints)", mark)
    # the paper's budget ratio to the largest model the sweep trained (students are smaller)
    budget = round(BUDGET_RATIO * max(entry.fp16_mib for entry in zoo.models), 2)

    distill = None
    if demo.students:
        taught, zoo = distill_stage(result, zoo, demo.students, budget, demo.distill_lambda,
                                    max_concurrent, max_failures=1)
        teacher = json.loads((out / "sweep" / TEACHER_DIR / "ensemble.json").read_text())
        entries = {entry.name: entry for entry in [*zoo.models, *zoo.eliminated]}
        distill = {"teacher": "".join(m.get("letter") or "?" for m in teacher["members"]),
                   "teacher_gap": teacher["validate_gap"], "distill_lambda": demo.distill_lambda,
                   "students": [{"model": trial.model, "error": trial.error,
                                 "gap": entries[trial.model].gap if trial.model in entries else None,
                                 "letter": getattr(entries.get(trial.model), "letter", None)}
                                for trial in taught.trials]}
        mark = lap("distill (teacher export + students)", mark)

    compression = [compress_checkpoint(entry.checkpoint, out / "fp16" / entry.name,
                                       validate_data=choose, progress=False).to_dict()
                   for entry in zoo.models]
    mark = lap("fp16", mark)

    ensemble = make_ensemble(None, out / "ensemble", tune=True, search_budget_mib=budget,
                             zoo_path=zoo.path, validate_data=choose, report_data=report, progress=False,
                             precision=demo.precision)
    mark = lap("ensemble (search + export)", mark)

    submission = infer(out / "ensemble", test_glob, out / "submission.csv", progress=False)
    mark = lap("infer", mark)

    summary = {
        "scale": scale_name, "data": str(data_dir), "data_reused": data["reused"],
        "zoo_path": str(zoo.path), "zoo_table": zoo.table(), "budget_mib": budget,
        "compression": compression, "ensemble": ensemble.to_dict(), "search_table": ensemble.table,
        "precision": demo.precision, "distill": distill,
        "submission": submission.to_dict(), "sweep_parent_run_id": result.parent_run_id,
        "trials": [dataclasses.asdict(trial) for trial in result.trials], "timings_s": timings,
    }
    report = write_report(summary, zoo, out)
    summary["report"] = str(report)
    summary["total_s"] = round(time.monotonic() - started, 1)
    atomic.write_json(out / "summary.json", summary, default=str)
    return summary
