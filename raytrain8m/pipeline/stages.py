"""The chains between stages, one way for every caller (`raytrain8m sweep`, the demo): a sweep
to its zoo, and the zoo to distilled students that join it."""
from __future__ import annotations

import logging
from typing import Sequence

from raytrain8m.models import ModelConfig
from raytrain8m.runtime.errors import ConfigError, Raytrain8mError
from raytrain8m.select.zoo import Zoo, build_zoo
from raytrain8m.sweep.placement import parse_grid
from raytrain8m.sweep.records import SWEEP_JSON, read_sweep, scoring_data
from raytrain8m.sweep.tune import SweepResult, SweepSpec, resume_sweep, run_sweep
from raytrain8m.train.config import TrainConfig

log = logging.getLogger(__name__)

TEACHER_DIR = "teacher"    # in a sweep's out: the ensemble export its students learn from
STUDENTS_DIR = "students"  # in a sweep's out: the distill stage's own sweep of students


def zoo_of_sweep(result: SweepResult, interval: int = 1, also: Sequence[SweepResult] = ()) -> Zoo:
    """The zoo of a sweep's completed trials (and those of `also`, sweeps on the same split),
    scored on the sweep's holdout (choices on one half, reported GAPs on the other) and logged
    under the sweep's MLflow run. Trials that failed are left out; none completed is an error.
    Callers decide what a failed trial means for them."""
    done = [trial.run_dir for sweep in (result, *also) for trial in sweep.completed]
    if not done:
        raise Raytrain8mError("no trial of the sweep completed; nothing to put in the zoo")
    choose, report, split = scoring_data(result.out)
    return build_zoo(done, choose, result.out, interval=interval, parent_run_id=result.parent_run_id,
                     report_data=report, split=split)


def check_students(students: Sequence[ModelConfig], grid: Sequence[str]) -> None:
    """Refuse a student named like a model of the grid: the zoo is keyed by name."""
    taken = {model.name for model in students} & set(grid)
    if taken:
        raise ConfigError(f"--distill {', '.join(sorted(taken))}: also in the grid; a student needs a model "
                          "name of its own in the zoo")


def distill_stage(result: SweepResult, zoo: Zoo, students: str | Sequence[str], teacher_budget_mib: float,
                  distill_lambda: float = 1.0, max_concurrent: int | None = None, max_failures: int = 2,
                  progress: bool = False) -> tuple[SweepResult, Zoo]:
    """Distil the zoo into `students` (grid names) and let them join it.

    The teacher is the zoo's best ensemble under `teacher_budget_mib` (searched on the sweep's
    holdout, exported to `<out>/teacher`). The students train in their own sweep
    (`<out>/students`) on the sweep's own train files and split, with targets λ · teacher +
    (1 − λ) · labels, the teacher running beside each student in its workers. The zoo is then
    rebuilt over the sweep's models and the students (existing letters kept), so the
    ensemble search ranks the students as candidate members. Returns (the students' sweep, the zoo)."""
    from raytrain8m.compose.ensemble import make_ensemble

    saved = read_sweep(result.out)
    train = TrainConfig.from_dict(saved["train"])  # the sweep's split: the same train files and holdout
    models = tuple(parse_grid(students, num_classes=train.model.num_classes))
    check_students(models, [placement["model"] for placement in saved["placements"]])
    students_out = result.out / STUDENTS_DIR
    if (students_out / SWEEP_JSON).is_file():  # the stage ran before (a resumed sweep): finish it
        planned = sorted(placement["model"] for placement in read_sweep(students_out)["placements"])
        if planned != sorted(model.name for model in models):
            raise ConfigError(f"{students_out} holds the students {', '.join(planned)}; resume with the same "
                              "--distill or choose another --out")
        log.info("distill: finishing the students' sweep in %s (teacher as it was)", students_out)
        taught = resume_sweep(students_out)
        return taught, zoo_of_sweep(result, also=[taught])
    teacher = make_ensemble(None, result.out / TEACHER_DIR, search_budget_mib=teacher_budget_mib,
                            zoo_path=zoo.path, progress=progress, track=False)
    label = "".join(member.letter or "?" for member in teacher.members)
    log.info("distill: teacher %s (%.2f MiB, validate GAP %.4f); students %s", label, teacher.size_mib,
             teacher.validate_gap or float("nan"), students if isinstance(students, str) else ",".join(students))
    spec = SweepSpec(models, train.replace(teacher=str(result.out / TEACHER_DIR), distill_lambda=distill_lambda),
                     saved["sweep"].get("workers_per_trial", 1))
    taught = run_sweep(spec, students_out, max_concurrent, max_failures,
                       name=f"{result.out.name}-students")
    return taught, zoo_of_sweep(result, also=[taught])
