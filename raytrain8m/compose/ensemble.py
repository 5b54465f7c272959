"""Ensembles (paper 2.3): members under their own scopes in one graph, weights tuned on validate GAP.

`make_ensemble` is what `jobs/ensemble.py` calls: resolve the members (zoo letters or
checkpoint paths), check the size budget (sum of the members' stored sizes, fp16 or int8),
settle the weights
(given, normalised, or tuned), export (`raytrain8m.compose.export`). `search` ranks every
member combination of a zoo under a budget — the paper's Table 2, made by the tool.
Member predictions on validate are computed once per member and kept as float16 on disk
(`raytrain8m.records.predictions`); combinations are scored from there chunk by chunk, numpy only.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from raytrain8m.models import ModelConfig, family, size_mib
from raytrain8m.models.config import DEFAULT_BUDGET_MIB, MEMBER_PRECISIONS, SEARCH_AUTO, SEARCH_PRECISIONS, member_label
from raytrain8m.models.storage import with_precision
from raytrain8m.records.checkpoint import is_checkpoint, read_config
from raytrain8m.records.predictions import PredictionStore, combinations, rank_combinations, tune_weights
from raytrain8m.runtime.errors import BudgetError, CheckpointError, ConfigError

log = logging.getLogger(__name__)

_LETTERS = re.compile(r"^[A-Za-z]+$")


@dataclasses.dataclass
class Member:
    name: str
    checkpoint: str
    config: ModelConfig
    fp16_mib: float
    letter: str | None = None
    gap: float | None = None  # the member's own validate GAP, when known
    precision: str = "fp16"   # how the export stores it: fp16 or int8 (models/storage.py)
    stored_mib: float = 0.0   # its size at `precision`: the bytes the export holds for it

    def __post_init__(self) -> None:
        self.stored_mib = self.stored_mib or size_mib(with_precision(self.config, self.precision))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "letter": self.letter, "checkpoint": self.checkpoint,
                "fp16_mib": round(self.fp16_mib, 3), "precision": self.precision,
                "stored_mib": round(self.stored_mib, 3), "gap": self.gap, "family": self.config.family,
                "cluster_size": self.config.cluster_size,
                "hidden_size": self.config.hidden_size, "num_classes": self.config.num_classes}


def member_from_checkpoint(path: str | os.PathLike, letter: str | None = None,
                           gap: float | None = None, precision: str = "fp16") -> Member:
    path = Path(path)
    if not is_checkpoint(path):
        raise CheckpointError(f"{path}: missing or incomplete checkpoint (needs model.json, state.json, "
                              "weights.index)")
    config = read_config(path).replace(fp16=False, int8="")
    family(config)  # any registered family can be a member; an unknown one fails here
    return Member(config.name, str(path.resolve()), config, size_mib(config, fp16=True), letter, gap,
                  check_precision(precision))


def check_precision(precision: str) -> str:
    if precision not in MEMBER_PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(MEMBER_PRECISIONS)}, got {precision!r}")
    return precision


def _zoo(path: str | os.PathLike):
    from raytrain8m.select.zoo import load_zoo

    return load_zoo(path)


def zoo_member(entry: Any, average: bool = True, precision: str = "fp16") -> Member:
    """A member from a zoo entry: the checkpoint the zoo scored best (averaged range or best
    single) when `average`, else its best single checkpoint."""
    if average:
        return member_from_checkpoint(entry.checkpoint, entry.letter, entry.gap, precision)
    return member_from_checkpoint(entry.best_single_checkpoint, entry.letter, entry.best_single_gap, precision)


def is_letter_spec(spec: str) -> bool:
    return bool(_LETTERS.match(spec)) and not Path(spec).exists()


def resolve_members(spec: str, zoo_path: str | os.PathLike | None = None, average: bool = True,
                    precision: str = "fp16") -> list[Member]:
    """`YHLS` (zoo letters) or `path1,path2` (checkpoint directories) → members."""
    spec = spec.strip()
    if not spec:
        raise ConfigError("--members is empty; give zoo letters (YHLS) or comma-separated checkpoint paths")
    if is_letter_spec(spec):
        if zoo_path is None:
            raise ConfigError(f"members {spec!r} are zoo letters but no zoo was given (--zoo)")
        members = [zoo_member(entry, average, precision) for entry in _zoo(zoo_path).members(spec)]
    else:
        paths = [part.strip() for part in spec.split(",") if part.strip()]
        if len(set(paths)) != len(paths):
            raise ConfigError(f"member checkpoints repeat in {spec!r}")
        members = [member_from_checkpoint(path, precision=precision) for path in paths]
    check_compatible(members)
    return members


def check_compatible(members: Sequence[Member]) -> None:
    """Members must predict the same classes from the same features."""
    first = members[0]
    for member in members[1:]:
        for key in ("num_classes", "rgb_size", "audio_size"):
            if getattr(member.config, key) != getattr(first.config, key):
                raise ConfigError(f"members {first.checkpoint} and {member.checkpoint} differ in {key} "
                                  f"({getattr(first.config, key)} != {getattr(member.config, key)})")


def total_mib(members: Sequence[Member]) -> float:
    return sum(member.stored_mib for member in members)


def check_budget(members: Sequence[Member], budget_mib: float = DEFAULT_BUDGET_MIB) -> float:
    size = total_mib(members)
    if size > budget_mib:
        parts = " + ".join(f"{m.letter or m.name} {m.stored_mib:.2f} {m.precision}" for m in members)
        raise BudgetError(f"ensemble is {size:.2f} MiB ({parts}), over the budget of {budget_mib:g} MiB; "
                          "drop a member or raise --budget")
    return size


def normalise_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """Equal weights when none are given; weights not summing to 1 are rescaled with a warning."""
    if weights is None:
        return [1.0 / count] * count
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise ConfigError(f"{len(weights)} weights for {count} members; give one weight per member")
    if any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"weights must be non-negative with a positive sum, got {weights}")
    total = sum(weights)
    if abs(total - 1.0) > 1e-6:
        log.warning("weights %s sum to %.6g, not 1; normalising them to %s", weights, total,
                    [round(w / total, 6) for w in weights])
    return [w / total for w in weights]


def parse_weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        weights = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise ConfigError(f"--weights must be comma-separated numbers, got {text!r}") from error
    if any(not weight >= 0 for weight in weights):
        raise ConfigError(f"--weights must be >= 0 (a member's share of the ensemble), got {text!r}")
    return weights


# -- validate predictions, computed once per member, kept as float16 on disk --------------------

def predict_members(members: Sequence[Member], data: str | Sequence[str], directory: str | os.PathLike,
                    batch_size: int = 256, max_batches: int | None = None,
                    progress: bool = True, names: Sequence[str] | None = None) -> PredictionStore:
    """Run each member once over `data` into a prediction store in `directory` (float16 on disk,
    videos × classes × 2 bytes a member; memory: one batch). `names`: the store's name for each
    (default: its letter, else its model name)."""
    from raytrain8m.compose.compress import load_predictor_at
    from raytrain8m.records.evaluate import predict_batches

    num_classes = members[0].config.num_classes
    store = PredictionStore.create(directory, num_classes)
    for index, member in enumerate(members):
        predict = load_predictor_at(member.checkpoint, member.precision)
        name = names[index] if names is not None else member.letter or member.name
        with store.writer(name) as writer:
            for batch in predict_batches(predict, data, num_classes, batch_size, max_batches, progress=progress,
                                         desc=f"predict {name}"):
                writer.add(batch.scores, batch.labels, batch.ids)
            if not writer.videos:
                raise ConfigError(f"no validate videos in {data}")
    return store


# -- the job's library calls ----------------------------------------------------------------------

@dataclasses.dataclass
class EnsembleResult:
    out: str | None
    members: list[Member]
    weights: list[float]
    size_mib: float
    validate_gap: float | None      # on the files the weights and members were chosen on
    table: str | None = None
    report_gap: float | None = None  # on the report files (none of the choices was made on them)

    def to_dict(self) -> dict[str, Any]:
        return {"out": self.out, "members": [m.to_dict() for m in self.members], "weights": self.weights,
                "size_mib": round(self.size_mib, 3), "validate_gap": self.validate_gap,
                "report_gap": self.report_gap}


def _predictions_dir(predictions_dir: str | os.PathLike | None):
    """A context giving the directory a prediction store is written to: `predictions_dir` (kept),
    or a temporary one (removed afterwards)."""
    import contextlib
    import tempfile

    if predictions_dir is not None:
        return contextlib.nullcontext(Path(predictions_dir))
    return tempfile.TemporaryDirectory(prefix="raytrain8m-predictions-")


def make_ensemble(members_spec: str | None, out: str | os.PathLike | None, weights: Sequence[float] | None = None,
                  tune: bool = False, search_budget_mib: float | None = None,
                  budget_mib: float = DEFAULT_BUDGET_MIB, zoo_path: str | os.PathLike | None = None,
                  validate_data: str | Sequence[str] | None = None, average: bool = True,
                  batch_size: int = 256, max_batches: int | None = None, max_members: int = 4,
                  progress: bool = True, track: bool = True,
                  predictions_dir: str | os.PathLike | None = None, precision: str = "fp16",
                  report_data: str | Sequence[str] | None = None) -> EnsembleResult:
    """Resolve, check, weigh (or search), evaluate on validate when given, export to `out`.
    Members are stored at `precision` (fp16 or int8) unless they say otherwise.
    Member predictions go to a float16 store in `predictions_dir` (default: a temporary one).
    Without `validate_data`, a zoo that records its sweep's holdout gives it (the files its
    choices were made on) and `report_data` (the other half: the ensemble's `report_gap`)."""
    table = None
    if validate_data is None and zoo_path is not None and Path(zoo_path).is_file():
        zoo = _zoo(zoo_path)
        if zoo.choose_data:
            validate_data = zoo.choose_data
            report_data = report_data if report_data is not None else zoo.report_data
            log.info("scoring on the zoo's holdout: %s", zoo.split)
    if search_budget_mib is not None and members_spec:
        raise ConfigError("give --members or --search, not both")
    if precision == SEARCH_AUTO and search_budget_mib is None:
        raise ConfigError(f"--precision {SEARCH_AUTO} is for --search (it picks each member's precision)")
    if search_budget_mib is not None:
        if zoo_path is None or validate_data is None:
            raise ConfigError("--search needs --zoo and --validate-data")
        rows, candidates = search(zoo_path, validate_data, search_budget_mib, tune=tune,
                                  average=average, max_members=max_members, batch_size=batch_size,
                                  max_batches=max_batches, progress=progress, predictions_dir=predictions_dir,
                                  precision=precision)
        table = format_table(rows)
        best = rows[0]
        members = [candidates[i] for i in best["indices"]]
        weights, validate_gap = best["weights"], best["gap"]
        budget_mib = max(budget_mib, search_budget_mib)
    else:
        if not members_spec:
            raise ConfigError("give --members (zoo letters or checkpoint paths) or --search BUDGET")
        members = resolve_members(members_spec, zoo_path, average, precision)
        check_budget(members, budget_mib)
        if tune and weights is not None:
            log.info("--tune-weights starts from the given weights")
        weights = normalise_weights(weights, len(members))
        validate_gap = None
        if tune and validate_data is None:
            raise ConfigError("--tune-weights needs --validate-data")
        if validate_data is not None:
            with _predictions_dir(predictions_dir) as directory:
                store = predict_members(members, validate_data, directory, batch_size, max_batches, progress)
                singles = store.gaps([([index], [1.0]) for index in range(len(members))])
                for member, gap in zip(members, singles):
                    member.gap = gap
                if tune:
                    weights, validate_gap = tune_weights(store, start=weights)
                else:
                    validate_gap = store.gap(weights)
    size = check_budget(members, budget_mib)
    result = EnsembleResult(None, members, list(weights), size, validate_gap, table)
    if report_data is not None:
        with _predictions_dir(None) as directory:
            result.report_gap = predict_members(members, report_data, directory, batch_size, max_batches,
                                                progress).gap(weights)
    if out is not None:
        from raytrain8m.compose.export import export_ensemble, stored_mib

        result.out = str(export_ensemble(members, weights, out, validate_gap=validate_gap))
        size = result.size_mib = stored_mib(result.out)
    if track:
        from raytrain8m.records.tracking import log_run

        label = "".join(m.letter or "" for m in members) or ",".join(m.name for m in members)
        metrics = {"size_mib": size, **({"validate_gap": validate_gap} if validate_gap is not None else {}),
                   **({"report_gap": result.report_gap} if result.report_gap is not None else {})}
        metrics.update({f"member{i}_gap": m.gap for i, m in enumerate(members) if m.gap is not None})
        run_id = log_run(f"ensemble {label}", {"members": ",".join(m.checkpoint for m in members),
                                               "weights": ",".join(f"{w:.4f}" for w in weights), "out": str(out)},
                         metrics, tags={"stage": "ensemble"})
        if run_id and result.out:
            from raytrain8m.records.tracking import register_ensemble
            register_ensemble(run_id, result.out, {
                "members": ",".join(m.name + (f" ({m.letter})" if m.letter else "") for m in members),
                "weights": ",".join(f"{w:.4f}" for w in weights),
                "sizes_mib": ",".join(f"{m.stored_mib:.3f}" for m in members),
                "precisions": ",".join(m.precision for m in members), "size_mib": f"{size:.3f}",
                "validate_gap": "" if validate_gap is None else f"{validate_gap:.4f}"})
    return result


def search(zoo_path: str | os.PathLike, validate_data: str | Sequence[str], budget_mib: float,
           tune: bool = False, average: bool = True, max_members: int = 4, tune_top: int = 5,
           batch_size: int = 256, max_batches: int | None = None, progress: bool = True,
           predictions_dir: str | os.PathLike | None = None,
           precision: str = "fp16") -> tuple[list[dict], list[Member]]:
    """Rank every zoo combination (1..max_members members) whose sizes at `precision` fit
    `budget_mib`: (rows best first, the candidates the rows' indices refer to). `precision`
    fp16 or int8 holds every member at it; `auto` offers each model at both (int8 shown as
    `A8`) and lets the ranking pick each member's, one precision per model in a combination."""
    if precision not in SEARCH_PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(SEARCH_PRECISIONS)}, got {precision!r}")
    zoo = _zoo(zoo_path)
    precisions = MEMBER_PRECISIONS if precision == SEARCH_AUTO else (precision,)
    candidates = [zoo_member(entry, average, held) for entry in zoo.models for held in precisions]
    if not candidates:
        raise ConfigError(f"{zoo_path}: the zoo has no models")
    check_compatible(candidates)
    groups = [index // len(precisions) for index in range(len(candidates))]
    # every member is at `precision` but with auto: only then does a label say it
    labels = [member_label(m.letter or "?", m.precision if precision == SEARCH_AUTO else "") for m in candidates]
    with _predictions_dir(predictions_dir) as directory:
        # fail on the budget before predicting anything
        combinations([m.stored_mib for m in candidates], budget_mib, max_members, groups)
        store = predict_members(candidates, validate_data, directory, batch_size, max_batches, progress,
                                names=labels)
        rows = rank_combinations(store, [m.stored_mib for m in candidates], budget_mib, max_members, tune,
                                 tune_top, labels, groups=groups)
    for member, gap in zip(candidates, store_gaps_of_singles(rows, len(candidates))):
        member.gap = gap
    return rows, candidates


def store_gaps_of_singles(rows: Sequence[dict], count: int) -> list[float | None]:
    """Each member's own GAP, as `rank_combinations` recorded it in the rows."""
    gaps: list[float | None] = [None] * count
    for row in rows:
        for index, gap in zip(row["indices"], row["member_gaps"]):
            gaps[index] = gap
    return gaps


def format_table(rows: Sequence[dict], top: int = 20) -> str:
    """The paper's Table 2: ensemble, size, validate GAP, weights."""
    header = f"{'rank':>4}  {'ensemble':<10}{'size MiB':>10}{'GAP':>9}{'best member':>13}  weights"
    lines = [header, "-" * len(header)]
    for rank, row in enumerate(rows[:top], 1):
        weights = ", ".join(f"{w:.2f}" for w in row["weights"])
        lines.append(f"{rank:>4}  {row['members']:<10}{row['size_mib']:>10.2f}{row['gap']:>9.4f}"
                     f"{row['best_member_gap']:>13.4f}  ({weights}){' tuned' if row['tuned'] else ''}")
    if len(rows) > top:
        lines.append(f"… {len(rows) - top} more combinations")
    return "\n".join(lines)
