"""The model zoo: the non-inferior trained models, each named by a letter.

The paper kept 18 of 28 models: "if a model has larger size but same or worse score
than another model, we mark it an inferior model". `zoo.json` is what the ensemble
stage reads to turn `YHLS` into checkpoints.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import string
from pathlib import Path
from typing import Any, Iterable, Sequence

from raytrain8m.runtime import atomic
from raytrain8m.runtime.errors import ConfigError

log = logging.getLogger(__name__)

LETTERS = string.ascii_uppercase + string.ascii_lowercase  # a–z only past 26 models


@dataclasses.dataclass
class ZooEntry:
    name: str
    cluster_size: int
    hidden_size: int
    num_classes: int
    fp32_mib: float
    fp16_mib: float
    best_single_gap: float
    best_single_checkpoint: str
    checkpoints: list[str] = dataclasses.field(default_factory=list)
    averaged_gap: float | None = None
    averaged_checkpoint: str | None = None
    run_dir: str = ""
    letter: str = ""
    mlflow_run_id: str | None = None
    pinned: bool = False
    report_gap: float | None = None  # the chosen checkpoint's GAP on the report files (not chosen on)
    ema_gap: float | None = None         # the weights' moving average (`--ema-decay` runs only)
    ema_checkpoint: str | None = None

    def _best(self) -> tuple[float, str]:
        # Averaging usually wins (the paper: +0.0039); early in training it may not. Ties go to
        # the average, then the EMA, then the single checkpoint.
        candidates = [(self.averaged_gap, self.averaged_checkpoint), (self.ema_gap, self.ema_checkpoint),
                      (self.best_single_gap, self.best_single_checkpoint)]
        return max(((gap, path) for gap, path in candidates if gap is not None and path),
                   key=lambda candidate: candidate[0], default=(self.best_single_gap, self.best_single_checkpoint))

    @property
    def gap(self) -> float:
        """The model's score: the best of its averaged range, its EMA weights and its best single checkpoint."""
        return self._best()[0]

    @property
    def checkpoint(self) -> str:
        """The checkpoint that represents this model in an ensemble (the one scoring `gap`)."""
        return self._best()[1]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def pareto(entries: Iterable[ZooEntry]) -> tuple[list[ZooEntry], list[ZooEntry]]:
    """Split into (kept, eliminated): eliminated = another is no larger and scores strictly better,
    or is strictly smaller and scores at least as well (the paper's "inferior model")."""
    entries = list(entries)
    kept, eliminated = [], []
    for entry in entries:
        inferior = any(
            other is not entry and (
                (other.fp32_mib < entry.fp32_mib and other.gap >= entry.gap)
                or (other.fp32_mib <= entry.fp32_mib and other.gap > entry.gap))
            for other in entries)
        (eliminated if inferior else kept).append(entry)
    return kept, eliminated


def assign_letters(entries: list[ZooEntry]) -> list[ZooEntry]:
    """Sort by decreasing size (then GAP) as Table 1 does, keep pinned letters, fill the rest A, B, …"""
    entries = sorted(entries, key=lambda entry: (-entry.fp32_mib, -entry.gap))
    taken = {entry.letter for entry in entries if entry.pinned and entry.letter}
    free = iter(letter for letter in LETTERS if letter not in taken)
    for entry in entries:
        if not (entry.pinned and entry.letter):
            try:
                entry.letter = next(free)
            except StopIteration:
                raise ConfigError(f"more than {len(LETTERS)} models in the zoo; letters ran out") from None
    return entries


@dataclasses.dataclass
class Zoo:
    models: list[ZooEntry]
    eliminated: list[ZooEntry] = dataclasses.field(default_factory=list)
    path: Path | None = None
    split: str | None = None               # which files the choices and reported GAPs are on
    choose_data: list[str] | None = None   # the files choices were made on
    report_data: list[str] | None = None   # the files report_gap was measured on
    timing: dict | None = None             # the scoring's wall time vs the sum of its evaluations

    @classmethod
    def build(cls, entries: Iterable[ZooEntry]) -> "Zoo":
        kept, eliminated = pareto(entries)
        return cls(assign_letters(kept), sorted(eliminated, key=lambda entry: -entry.fp32_mib))

    def entry(self, letter: str) -> ZooEntry:
        for entry in self.models:
            if entry.letter == letter:
                return entry
        known = "".join(entry.letter for entry in self.models)
        raise ConfigError(f"unknown zoo letter {letter!r} (zoo {self.path or ''} has {known or 'nothing'})")

    def members(self, letters: str) -> list[ZooEntry]:
        if len(set(letters)) != len(letters):
            raise ConfigError(f"member letters repeat in {letters!r}")
        return [self.entry(letter) for letter in letters]

    def pin(self, letter: str, name: str) -> None:
        """Give model `name` the letter `letter` for good (later rebuilds keep it). No other
        model's letter changes, except the one holding `letter`: it takes `name`'s old letter."""
        if letter not in LETTERS:
            raise ConfigError(f"zoo letters are A–Z (then a–z), got {letter!r}")
        if any(entry.letter == letter and entry.name != name for entry in self.models if entry.pinned):
            raise ConfigError(f"letter {letter} is already pinned to another model")
        matches = [entry for entry in self.models if entry.name == name]
        if not matches:
            raise ConfigError(f"no model {name} in the zoo")
        for holder in self.models:
            if holder.letter == letter and holder is not matches[0]:
                holder.letter = matches[0].letter  # a swap
        matches[0].letter, matches[0].pinned = letter, True

    def to_dict(self) -> dict[str, Any]:
        return {"models": [entry.to_dict() for entry in self.models],
                "eliminated": [entry.to_dict() for entry in self.eliminated],
                "split": self.split, "choose_data": self.choose_data, "report_data": self.report_data,
                "timing": self.timing}

    def save(self, path: str | os.PathLike) -> Path:
        """`path` (zoo.json) and, beside it, the table as text (zoo.txt), each written atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for target, text in ((path, json.dumps(self.to_dict(), indent=2)), (path.with_suffix(".txt"), self.table())):
            atomic.write_text(target, text + "\n")
        self.path = path
        return path

    def table(self) -> str:
        """Table 1 of the paper, for this zoo."""
        reported = any(entry.report_gap is not None for entry in self.models)
        with_ema = any(entry.ema_gap is not None for entry in self.models)
        header = (f"{'model':<14}{'fp32 MiB':>10}{'fp16 MiB':>10}{'compr.':>8}"
                  f"{'avg ckpt GAP':>14}{'best single GAP':>17}" + (f"{'EMA GAP':>9}" if with_ema else "")
                  + (f"{'report GAP':>12}" if reported else ""))
        rows = [header, "-" * len(header)]
        for entry in self.models:
            averaged = f"{entry.averaged_gap:.4f}" if entry.averaged_gap is not None else "-"
            shown = f"{entry.report_gap:.4f}" if entry.report_gap is not None else "-"
            rows.append(f"{entry.name + ' (' + entry.letter + ')':<14}{entry.fp32_mib:>10.2f}"
                        f"{entry.fp16_mib:>10.2f}{1 - entry.fp16_mib / entry.fp32_mib:>8.1%}"
                        f"{averaged:>14}{entry.best_single_gap:>17.4f}"
                        + (f"{f'{entry.ema_gap:.4f}' if entry.ema_gap is not None else '-':>9}" if with_ema else "")
                        + (f"{shown:>12}" if reported else ""))
        if self.eliminated:
            rows.append("eliminated (inferior): " + ", ".join(entry.name for entry in self.eliminated))
        if self.split:
            rows.append(f"split: {self.split}" + ("; avg/best single GAPs are on the files chosen on, "
                                                   "report GAP on the others" if reported else ""))
        return "\n".join(rows)


def _entry(values: dict[str, Any], path: Path) -> ZooEntry:
    known = {field.name for field in dataclasses.fields(ZooEntry)}
    try:
        return ZooEntry(**{key: value for key, value in values.items() if key in known})
    except TypeError as error:
        raise ConfigError(f"{path}: bad zoo entry {values.get('name', '?')}: {error}") from error


def load_zoo(path: str | os.PathLike) -> Zoo:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no zoo here; run jobs/sweep.py (or `make sweep`) first")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from error
    return Zoo([_entry(values, path) for values in payload.get("models", [])],
               [_entry(values, path) for values in payload.get("eliminated", [])], path,
               payload.get("split"), payload.get("choose_data"), payload.get("report_data"), payload.get("timing"))


def carry_pins(entries: Iterable[ZooEntry], previous: Zoo | None) -> list[ZooEntry]:
    """Give each entry the letter a previous zoo pinned to its model name."""
    pins = {entry.name: entry.letter for entry in (previous.models if previous else []) if entry.pinned}
    entries = list(entries)
    for entry in entries:
        if entry.name in pins:
            entry.letter, entry.pinned = pins[entry.name], True
    return entries


def plot_pareto(zoo: Zoo, path: str | os.PathLike, title: str = "model zoo") -> Path:
    """Size (fp32 MiB) vs GAP: kept models labelled with their letters, eliminated ones greyed."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    kept = sorted(zoo.models, key=lambda entry: entry.fp32_mib)
    axes.plot([e.fp32_mib for e in kept], [e.gap for e in kept], "o-", color="tab:blue",
              label="kept (Pareto front)")
    for entry in kept:
        axes.annotate(f"{entry.letter} {entry.name}", (entry.fp32_mib, entry.gap), fontsize=7,
                      xytext=(4, 4), textcoords="offset points")
    if zoo.eliminated:
        axes.scatter([e.fp32_mib for e in zoo.eliminated], [e.gap for e in zoo.eliminated],
                     color="lightgrey", edgecolors="grey", label="eliminated (inferior)", zorder=1)
        for entry in zoo.eliminated:
            axes.annotate(entry.name, (entry.fp32_mib, entry.gap), fontsize=6, color="grey",
                          xytext=(4, -8), textcoords="offset points")
    axes.set_xlabel("float32 model size (MiB)")
    axes.set_ylabel("validate GAP")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    return path


def build_zoo(run_dirs: Iterable[str | os.PathLike], validate_data: str | Sequence[str], out: str | os.PathLike,
              interval: int = 1, average: bool = True, eval_batches: int | None = None,
              parent_run_id: str | None = None, tracking_uri: str | None = None,
              report_data: str | Sequence[str] | None = None, split: str | None = None,
              parallel: bool = True, recorded: bool = True) -> Zoo:
    """Score each trained model on `validate_data` (every `interval`-th checkpoint, then the
    best average of a range around the best when `average`, and its EMA weights when it kept
    them), drop inferior models, letter the
    rest (keeping letters pinned in an existing `out/zoo.json`), write `zoo.json`, `zoo.txt` and
    `pareto.png`. The choices are made on `validate_data`; with `report_data` (the other half
    of the holdout) each model's choice is scored there too (`report_gap`). `split` says which
    files these are, in zoo.json and the table. A checkpoint's score that training recorded on
    these same files is read, not recomputed, and so is any evaluation an earlier build in `out`
    ran on the same content (`out/scores.json`); `recorded=False` evaluates everything again.
    Evaluations run as Ray tasks, many at once, when `parallel` and Ray is up (`raytrain8m.select.scoring`)."""
    from raytrain8m.data.files import expand
    from raytrain8m.models import size_mib
    from raytrain8m.records import tracking
    from raytrain8m.records.checkpoint import list_checkpoints, read_config, read_state, recorded_score
    from raytrain8m.select.average import average as write_average
    from raytrain8m.select.average import candidate_ranges
    from raytrain8m.select.scoring import SCORES_JSON, Evaluation, ScoreCache, Timing, timed_score

    out = Path(out)
    if interval < 1:
        raise ConfigError(f"interval must be >= 1, got {interval}")
    choose = _data_list(validate_data)
    expand(choose)  # a missing file fails here, not in a task
    timing = Timing()
    cache = ScoreCache(out / SCORES_JSON) if recorded else None
    models = []
    for run_dir in map(Path, run_dirs):
        checkpoints = list_checkpoints(run_dir)
        if not checkpoints:
            raise ConfigError(f"{run_dir}: no checkpoints to put in the zoo")
        config = read_config(checkpoints[-1])
        models.append((run_dir, config, checkpoints))

    # 1. every scored single checkpoint of every model: what training recorded on these files,
    #    the rest evaluated at once
    singles = [(number, index) for number, (_, _, checkpoints) in enumerate(models)
               for index in range(0, len(checkpoints), interval)]
    key = cache.data_key(choose, eval_batches) if cache else None
    known = {single: recorded_score(models[single[0]][2][single[1]], key) for single in singles} if key else {}
    missing = [single for single in singles if known.get(single) is None]
    results = dict(zip(missing, timed_score([Evaluation(models[number][1].name, (str(models[number][2][index]),),
                                                        tuple(choose), eval_batches) for number, index in missing],
                                            timing, parallel, cache)))
    timing.from_training += len(singles) - len(missing)
    scored: dict[int, list[dict]] = {number: [] for number in range(len(models))}
    for number, index in singles:
        checkpoint = models[number][2][index]
        result = results.get((number, index)) or known[(number, index)]
        scored[number].append({"index": index, "step": read_state(checkpoint)["step"],
                               "checkpoint": str(checkpoint), "gap": float(result["gap"]),
                               "from_training": (number, index) not in results})

    # 2. ranges around each model's best, at once
    ranges = []
    if average:
        for number, (_, config, checkpoints) in enumerate(models):
            if len(checkpoints) >= 2:
                best = max(scored[number], key=lambda row: row["gap"])
                ranges += [(number, start, end) for start, end in candidate_ranges(len(checkpoints), best["index"])]
    results = timed_score([Evaluation(models[number][1].name, tuple(str(p) for p in models[number][2][start:end + 1]),
                                      tuple(choose), eval_batches) for number, start, end in ranges],
                          timing, parallel, cache)
    averaged: dict[int, tuple[float, int, int]] = {}
    for (number, start, end), result in zip(ranges, results):
        if number not in averaged or result["gap"] > averaged[number][0]:
            averaged[number] = (float(result["gap"]), start, end)

    entries, sources = [], {}  # sources: an averaged checkpoint's members, which its scores are keyed by
    for number, (run_dir, config, checkpoints) in enumerate(models):
        best = max(scored[number], key=lambda row: row["gap"])
        entry = ZooEntry(name=config.name, cluster_size=config.cluster_size, hidden_size=config.hidden_size,
                         num_classes=config.num_classes, fp32_mib=size_mib(config, fp16=False),
                         fp16_mib=size_mib(config, fp16=True), best_single_gap=best["gap"],
                         best_single_checkpoint=best["checkpoint"], checkpoints=[str(p) for p in checkpoints],
                         run_dir=str(run_dir), mlflow_run_id=_run_id(run_dir))
        if number in averaged:
            gap, start, end = averaged[number]
            members = checkpoints[start:end + 1]
            entry.averaged_gap = gap
            entry.averaged_checkpoint = str(write_average(members, out / "averaged" / config.name, state={
                "best_single_gap": best["gap"], "best_single_step": best["step"],
                "best_single_checkpoint": best["checkpoint"], "averaged_gap": gap}))
            sources[entry.averaged_checkpoint] = tuple(str(path) for path in members)
        score_ema(entry, checkpoints, choose, out, eval_batches)
        entries.append(entry)

    # 3. each model's choice on the report files, at once
    report = _data_list(report_data) if report_data is not None else None
    if report is not None:
        # an averaged choice as the mean of its members: the same tensors as the checkpoint
        # written above, and the same key in a later build, which writes that checkpoint anew
        results = timed_score([Evaluation(entry.name, sources.get(entry.checkpoint, (entry.checkpoint,)),
                                          tuple(report), eval_batches) for entry in entries],
                              timing, parallel, cache)
        for entry, result in zip(entries, results):
            entry.report_gap = float(result["gap"])
    log.info("zoo scoring: %s", timing.describe())

    for number, entry in enumerate(entries):
        if entry.mlflow_run_id:
            logger = tracking.RunLogger(entry.mlflow_run_id, tracking_uri)
            for row in scored[number]:  # the curve a range is picked from (training logged its own points)
                if not row["from_training"]:
                    logger.log_metrics({"holdout_gap": row["gap"]}, step=row["step"])
            logger.log_metrics({"best_single_gap": entry.best_single_gap,
                                **({"averaged_gap": entry.averaged_gap} if entry.averaged_gap is not None else {}),
                                **({"ema_gap": entry.ema_gap} if entry.ema_gap is not None else {}),
                                **({"report_gap": entry.report_gap} if entry.report_gap is not None else {})})
            if split:
                logger.set_tags({"zoo_split": split})
            kind = {entry.averaged_checkpoint: "averaged", entry.ema_checkpoint: "EMA"}.get(entry.checkpoint,
                                                                                          "best single")
            tracking.log_chosen_checkpoint(entry.mlflow_run_id, entry.checkpoint, kind, tracking_uri)
    previous = load_zoo(out / "zoo.json") if (out / "zoo.json").is_file() else None
    zoo = Zoo.build(carry_pins(entries, previous))
    zoo.split, zoo.timing = split, timing.to_dict()
    zoo.choose_data, zoo.report_data = choose, report
    zoo.save(out / "zoo.json")
    plot_pareto(zoo, out / "pareto.png", title=f"model zoo ({len(zoo.models)} kept, "
                                               f"{len(zoo.eliminated)} eliminated)")
    if parent_run_id:
        from mlflow.exceptions import MlflowException

        mlflow_client = tracking.client(tracking_uri)
        for name in ("zoo.json", "zoo.txt", "pareto.png"):
            try:
                mlflow_client.log_artifact(parent_run_id, str(out / name), "zoo")
            except (MlflowException, OSError) as error:  # the zoo is built; tracking is a copy
                log.warning("MLflow: could not log %s (%s)", name, error)
        parent = tracking.RunLogger(parent_run_id, tracking_uri)
        parent.log_metrics({"zoo_models": len(zoo.models), "zoo_eliminated": len(zoo.eliminated),
                            "zoo_wall_s": timing.wall_s, "zoo_evaluation_s": timing.evaluation_s})
        if split:
            parent.set_tags({"zoo_split": split})
    return zoo


def _data_list(data: str | Sequence[str]) -> list[str]:
    return [data] if isinstance(data, (str, os.PathLike)) else [str(item) for item in data]


def score_ema(entry: ZooEntry, checkpoints: list, validate_data: str | Sequence[str], out: Path,
              eval_batches: int | None = None) -> None:
    """One more candidate for runs trained with `--ema-decay`: the moving-average weights of the
    last and of the best single checkpoint, scored on validate; the better is written to
    `out/ema/<model>` (a plain checkpoint) and recorded as `entry.ema_gap`/`ema_checkpoint`."""
    from raytrain8m.records.checkpoint import load_checkpoint, save_checkpoint
    from raytrain8m.records.evaluate import evaluate, model_from_tensors, predictor

    best = None
    for path in dict.fromkeys([str(checkpoints[-1]), str(entry.best_single_checkpoint)]):
        checkpoint = load_checkpoint(path, weights_only=True)
        weights = checkpoint.ema_weights
        if weights is None:
            continue
        gap = float(evaluate(predictor(model_from_tensors(checkpoint.config, weights)), validate_data,
                             checkpoint.config.num_classes, max_batches=eval_batches, progress=False)["gap"])
        log.debug("%s: EMA weights of step %d: GAP %.4f", checkpoint.config.name, checkpoint.step, gap)
        if best is None or gap > best[0]:
            best = (gap, checkpoint, weights)
    if best is not None:
        gap, checkpoint, weights = best
        target = save_checkpoint(out / "ema" / checkpoint.config.name, checkpoint.config, weights,
                                 step=checkpoint.step, state={"ema_of": str(checkpoint.path), "ema_gap": gap})
        entry.ema_gap, entry.ema_checkpoint = gap, str(target)


def _run_id(run_dir: Path) -> str | None:
    """The MLflow run `fit` recorded for a run directory (train.MLFLOW_JSON), if any."""
    record = run_dir / "mlflow.json"
    return json.loads(record.read_text()).get("run_id") if record.is_file() else None
