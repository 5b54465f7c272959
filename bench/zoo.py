r"""The zoo's checkpoint evaluations as Ray tasks, many at once, against one after another.

    make sweep                        # a 4-model sweep in runs/sweep (about 5 min here)
    python bench/zoo.py               # or: python bench/zoo.py --sweep DIR

Builds the zoo of a finished sweep three times, each into its own temporary directory (the
sweep's own zoo.json is not touched), on the sweep's holdout:

- tasks: every checkpoint evaluated again (`recorded=False`), as Ray tasks on a local Ray
  (or RAY_ADDRESS);
- serial: the same evaluations one after another in this process;
- as run: what `jobs/sweep.py` does: the scores training recorded are read and only the
  averaged ranges (and EMA weights) are evaluated, as tasks.

Last line: one JSON object with `models`, `evaluations`, `tasks_wall_s`, `tasks_evaluation_s`,
`serial_wall_s`, `serial_evaluation_s`, `speedup` (serial wall ÷ tasks wall), `as_run_wall_s`,
`as_run_evaluations`, `from_training`, `same_letters` and `same_gaps` (tasks vs serial).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's raytrain8m


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", default="runs/sweep", help="a finished sweep's --out (default: %(default)s)")
    parser.add_argument("--interval", type=int, default=1, help="score every N-th checkpoint (default: 1)")
    return parser.parse_args(argv)


def build(run_dirs, choose, report, split, parallel: bool, recorded: bool):
    from raytrain8m.select.zoo import build_zoo

    with tempfile.TemporaryDirectory(prefix="bench-zoo-") as out:
        started = time.perf_counter()
        zoo = build_zoo(run_dirs, choose, out, parallel=parallel, recorded=recorded,
                        report_data=report, split=split)
        return zoo, time.perf_counter() - started


def main(argv=None) -> int:
    args = parse_args(argv)
    from raytrain8m.runtime import localray
    from raytrain8m.runtime.errors import Raytrain8mError
    from raytrain8m.sweep import records as sweep_records

    out = Path(args.sweep).expanduser().absolute()
    try:
        run_dirs = [trial.run_dir for trial in sweep_records.finished_trials(sweep_records.read_sweep(out))]
        if not run_dirs:
            raise Raytrain8mError(f"{out}: no finished trial to put in a zoo")
        choose, report, split = sweep_records.scoring_data(out)
    except Raytrain8mError as error:
        print(f"error: {error} (run `make sweep` first, or pass --sweep DIR)", file=sys.stderr)
        return 2
    localray.start()
    tasks, tasks_s = build(run_dirs, choose, report, split, parallel=True, recorded=False)
    serial, serial_s = build(run_dirs, choose, report, split, parallel=False, recorded=False)
    as_run, as_run_s = build(run_dirs, choose, report, split, parallel=True, recorded=True)

    def letters(zoo):
        return {model.name: model.letter for model in zoo.models}

    def gaps(zoo):
        return {model.name: round(model.gap, 6) for model in zoo.models}

    figures = {
        "models": len(run_dirs), "evaluations": tasks.timing["evaluations"],
        "tasks_wall_s": round(tasks_s, 1), "tasks_evaluation_s": round(tasks.timing["evaluation_s"], 1),
        "serial_wall_s": round(serial_s, 1), "serial_evaluation_s": round(serial.timing["evaluation_s"], 1),
        "speedup": round(serial_s / tasks_s, 2),
        "as_run_wall_s": round(as_run_s, 1), "as_run_evaluations": as_run.timing["evaluations"],
        "from_training": as_run.timing["from_training"],
        "same_letters": letters(tasks) == letters(serial), "same_gaps": gaps(tasks) == gaps(serial),
    }
    print(f"{figures['models']} models, {figures['evaluations']} evaluations: "
          f"{figures['tasks_wall_s']} s as tasks, {figures['serial_wall_s']} s one after another; "
          f"as a sweep runs it ({figures['from_training']} scores from training): "
          f"{figures['as_run_evaluations']} evaluations in {figures['as_run_wall_s']} s")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
