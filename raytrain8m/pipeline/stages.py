"""The chain from a sweep to its zoo, one way for every caller (`raytrain8m sweep`, the demo)."""
from __future__ import annotations

from raytrain8m.runtime.errors import Raytrain8mError
from raytrain8m.select.zoo import Zoo, build_zoo
from raytrain8m.sweep.records import scoring_data
from raytrain8m.sweep.tune import SweepResult


def zoo_of_sweep(result: SweepResult, interval: int = 1) -> Zoo:
    """The zoo of a sweep's completed trials, scored on the sweep's holdout (choices on one half,
    reported GAPs on the other) and logged under the sweep's MLflow run. Trials that failed are
    left out; none completed is an error. Callers decide what a failed trial means for them."""
    done = [trial.run_dir for trial in result.completed]
    if not done:
        raise Raytrain8mError("no trial of the sweep completed; nothing to put in the zoo")
    choose, report, split = scoring_data(result.out)
    return build_zoo(done, choose, result.out, interval=interval, parent_run_id=result.parent_run_id,
                     report_data=report, split=split)
