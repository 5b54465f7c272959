"""Ensembles (paper 2.3): members under their own scopes in one graph, weights tuned on validate GAP.

`make_ensemble` is what `jobs/ensemble.py` calls: resolve the members (zoo letters or
checkpoint paths), check the size budget (sum of fp16 sizes), settle the weights
(given, normalised, or tuned), export (`raytrain8m.export`). `search` ranks every
member combination of a zoo under a budget — the paper's Table 2, made by the tool.
Member predictions on validate are computed once; combinations are numpy only.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from raytrain8m.checkpoint import is_checkpoint, read_config
from raytrain8m.errors import BudgetError, CheckpointError, ConfigError
from raytrain8m.models import ModelConfig, family, size_mib
from raytrain8m.models.config import DEFAULT_BUDGET_MIB

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

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "letter": self.letter, "checkpoint": self.checkpoint,
                "fp16_mib": round(self.fp16_mib, 3), "gap": self.gap, "family": self.config.family,
                "cluster_size": self.config.cluster_size,
                "hidden_size": self.config.hidden_size, "num_classes": self.config.num_classes}


def member_from_checkpoint(path: str | os.PathLike, letter: str | None = None,
                           gap: float | None = None) -> Member:
    path = Path(path)
    if not is_checkpoint(path):
        raise CheckpointError(f"{path}: missing or incomplete checkpoint (needs model.json, state.json, "
                              "weights.index)")
    config = read_config(path).replace(fp16=False)
    family(config)  # any registered family can be a member; an unknown one fails here
    return Member(config.name, str(path.resolve()), config, size_mib(config, fp16=True), letter, gap)


def _zoo(path: str | os.PathLike):
    from raytrain8m.zoo import load_zoo

    return load_zoo(path)


def zoo_member(entry: Any, average: bool = True) -> Member:
    """A member from a zoo entry: the checkpoint the zoo scored best (averaged range or best
    single) when `average`, else its best single checkpoint."""
    if average:
        return member_from_checkpoint(entry.checkpoint, entry.letter, entry.gap)
    return member_from_checkpoint(entry.best_single_checkpoint, entry.letter, entry.best_single_gap)


def is_letter_spec(spec: str) -> bool:
    return bool(_LETTERS.match(spec)) and not Path(spec).exists()


def resolve_members(spec: str, zoo_path: str | os.PathLike | None = None, average: bool = True) -> list[Member]:
    """`YHLS` (zoo letters) or `path1,path2` (checkpoint directories) → members."""
    spec = spec.strip()
    if not spec:
        raise ConfigError("--members is empty; give zoo letters (YHLS) or comma-separated checkpoint paths")
    if is_letter_spec(spec):
        if zoo_path is None:
            raise ConfigError(f"members {spec!r} are zoo letters but no zoo was given (--zoo)")
        members = [zoo_member(entry, average) for entry in _zoo(zoo_path).members(spec)]
    else:
        paths = [part.strip() for part in spec.split(",") if part.strip()]
        if len(set(paths)) != len(paths):
            raise ConfigError(f"member checkpoints repeat in {spec!r}")
        members = [member_from_checkpoint(path) for path in paths]
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
    return sum(member.fp16_mib for member in members)


def check_budget(members: Sequence[Member], budget_mib: float = DEFAULT_BUDGET_MIB) -> float:
    size = total_mib(members)
    if size > budget_mib:
        parts = " + ".join(f"{m.letter or m.name} {m.fp16_mib:.2f}" for m in members)
        raise BudgetError(f"ensemble is {size:.2f} MiB fp16 ({parts}), over the budget of {budget_mib:g} MiB; "
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


# -- validate predictions, computed once ----------------------------------------------------------

@dataclasses.dataclass
class ValidatePredictions:
    """Each member's predictions on the same validate videos, in the same order."""
    predictions: list[np.ndarray]  # [videos, V] float32 each
    labels: np.ndarray             # [videos, V] 0/1
    ids: list[str]

    def combine(self, weights: Sequence[float], indices: Sequence[int] | None = None) -> np.ndarray:
        indices = range(len(self.predictions)) if indices is None else indices
        total = np.zeros_like(self.predictions[0])
        for weight, index in zip(weights, indices):
            total += np.float32(weight) * self.predictions[index]
        return total

    def gap(self, weights: Sequence[float], indices: Sequence[int] | None = None) -> float:
        from raytrain8m.metrics import gap

        return float(gap(self.combine(weights, indices), self.labels))


def predict_members(members: Sequence[Member], data: str | Sequence[str], batch_size: int = 256,
                    max_batches: int | None = None, progress: bool = True) -> ValidatePredictions:
    """Run each member once over `data` (memory: videos × classes × 4 bytes per member)."""
    from raytrain8m.data.batches import iter_batches, to_model_inputs
    from raytrain8m.evaluate import load_predictor
    from tqdm import tqdm

    num_classes = members[0].config.num_classes
    outputs, labels, ids = [], None, None
    for member in members:
        predict, _ = load_predictor(member.checkpoint)
        member_predictions, member_labels, member_ids = [], [], []
        batches = iter_batches(data, batch_size, num_classes=num_classes)
        for index, batch in enumerate(tqdm(batches, desc=f"predict {member.letter or member.name}",
                                           unit="batch", disable=not progress, leave=False)):
            if max_batches is not None and index >= max_batches:
                break
            frames, num_frames, batch_labels = to_model_inputs(batch, num_classes)
            member_predictions.append(np.asarray(predict(frames, num_frames), np.float32))
            member_labels.append(batch_labels)
            member_ids.extend(str(i) for i in batch["id"])
        if not member_predictions:
            raise ConfigError(f"no validate videos in {data}")
        if ids is None:
            labels, ids = np.concatenate(member_labels), member_ids
        elif member_ids != ids:
            raise ConfigError(f"validate data {data} was read in a different order between members")
        outputs.append(np.concatenate(member_predictions))
    return ValidatePredictions(outputs, labels, ids)


def tune_weights(cached: ValidatePredictions, indices: Sequence[int] | None = None,
                 start: Sequence[float] | None = None, steps: Sequence[float] = (0.1, 0.05, 0.02, 0.01),
                 max_rounds: int = 30) -> tuple[list[float], float]:
    """Coordinate search on the simplex: move `step` of weight from one member to another while GAP rises."""
    indices = list(range(len(cached.predictions)) if indices is None else indices)
    count = len(indices)
    weights = np.array(start if start is not None else [1.0 / count] * count, dtype=np.float64)
    best = cached.gap(weights, indices)
    for step in steps:
        for _ in range(max_rounds):
            improved = False
            for gain, loss in itertools.permutations(range(count), 2):
                if weights[loss] < step - 1e-12:
                    continue
                candidate = weights.copy()
                candidate[gain] += step
                candidate[loss] -= step
                score = cached.gap(candidate, indices)
                if score > best + 1e-9:
                    weights, best, improved = candidate, score, True
            if not improved:
                break
    return [round(float(w), 6) for w in weights], best


# -- the job's library calls ----------------------------------------------------------------------

@dataclasses.dataclass
class EnsembleResult:
    out: str | None
    members: list[Member]
    weights: list[float]
    size_mib: float
    validate_gap: float | None
    table: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"out": self.out, "members": [m.to_dict() for m in self.members], "weights": self.weights,
                "size_mib": round(self.size_mib, 3), "validate_gap": self.validate_gap}


def make_ensemble(members_spec: str | None, out: str | os.PathLike | None, weights: Sequence[float] | None = None,
                  tune: bool = False, search_budget_mib: float | None = None,
                  budget_mib: float = DEFAULT_BUDGET_MIB, zoo_path: str | os.PathLike | None = None,
                  validate_data: str | Sequence[str] | None = None, average: bool = True,
                  batch_size: int = 256, max_batches: int | None = None, max_members: int = 4,
                  progress: bool = True, track: bool = True) -> EnsembleResult:
    """Resolve, check, weigh (or search), evaluate on validate when given, export to `out`."""
    table = None
    if search_budget_mib is not None and members_spec:
        raise ConfigError("give --members or --search, not both")
    if search_budget_mib is not None:
        if zoo_path is None or validate_data is None:
            raise ConfigError("--search needs --zoo and --validate-data")
        rows, cached, candidates = search(zoo_path, validate_data, search_budget_mib, tune=tune,
                                          average=average, max_members=max_members, batch_size=batch_size,
                                          max_batches=max_batches, progress=progress)
        table = format_table(rows)
        best = rows[0]
        members = [candidates[i] for i in best["indices"]]
        weights, validate_gap = best["weights"], best["gap"]
        budget_mib = max(budget_mib, search_budget_mib)
    else:
        if not members_spec:
            raise ConfigError("give --members (zoo letters or checkpoint paths) or --search BUDGET")
        members = resolve_members(members_spec, zoo_path, average)
        check_budget(members, budget_mib)
        if tune and weights is not None:
            log.info("--tune-weights starts from the given weights")
        weights = normalise_weights(weights, len(members))
        validate_gap = None
        if tune and validate_data is None:
            raise ConfigError("--tune-weights needs --validate-data")
        if validate_data is not None:
            cached = predict_members(members, validate_data, batch_size, max_batches, progress)
            for index, member in enumerate(members):
                member.gap = cached.gap([1.0], [index])
            if tune:
                weights, validate_gap = tune_weights(cached, start=weights)
            else:
                validate_gap = cached.gap(weights)
    size = check_budget(members, budget_mib)
    result = EnsembleResult(None, members, list(weights), size, validate_gap, table)
    if out is not None:
        from raytrain8m.export import export_ensemble

        result.out = str(export_ensemble(members, weights, out, validate_gap=validate_gap))
    if track:
        from raytrain8m.tracking import log_run

        label = "".join(m.letter or "" for m in members) or ",".join(m.name for m in members)
        metrics = {"size_mib": size, **({"validate_gap": validate_gap} if validate_gap is not None else {})}
        metrics.update({f"member{i}_gap": m.gap for i, m in enumerate(members) if m.gap is not None})
        run_id = log_run(f"ensemble {label}", {"members": ",".join(m.checkpoint for m in members),
                                               "weights": ",".join(f"{w:.4f}" for w in weights), "out": str(out)},
                         metrics, tags={"stage": "ensemble"})
        if run_id and result.out:
            from raytrain8m.tracking import register_ensemble
            register_ensemble(run_id, result.out, {
                "members": ",".join(m.name + (f" ({m.letter})" if m.letter else "") for m in members),
                "weights": ",".join(f"{w:.4f}" for w in weights),
                "sizes_mib": ",".join(f"{m.fp16_mib:.3f}" for m in members), "size_mib": f"{size:.3f}",
                "validate_gap": "" if validate_gap is None else f"{validate_gap:.4f}"})
    return result


def search(zoo_path: str | os.PathLike, validate_data: str | Sequence[str], budget_mib: float,
           tune: bool = False, average: bool = True, max_members: int = 4, tune_top: int = 5,
           batch_size: int = 256, max_batches: int | None = None,
           progress: bool = True) -> tuple[list[dict], ValidatePredictions, list[Member]]:
    """Rank every zoo combination (2..max_members members) whose fp16 sizes fit `budget_mib`.

    Equal weights for all; with `tune`, the `tune_top` best are re-ranked with tuned weights.
    """
    zoo = _zoo(zoo_path)
    candidates = [zoo_member(entry, average) for entry in zoo.models]
    if not candidates:
        raise ConfigError(f"{zoo_path}: the zoo has no models")
    check_compatible(candidates)
    combos = [combo for size in range(1, max_members + 1)
              for combo in itertools.combinations(range(len(candidates)), size)
              if sum(candidates[i].fp16_mib for i in combo) <= budget_mib]
    if not combos:
        raise BudgetError(f"no zoo model fits in {budget_mib:g} MiB (smallest "
                          f"{min(m.fp16_mib for m in candidates):.2f} MiB)")
    cached = predict_members(candidates, validate_data, batch_size, max_batches, progress)
    for index, member in enumerate(candidates):
        member.gap = cached.gap([1.0], [index])
    rows = []
    for combo in combos:
        weights = [1.0 / len(combo)] * len(combo)
        rows.append({"indices": combo, "weights": weights, "gap": cached.gap(weights, combo),
                     "size_mib": sum(candidates[i].fp16_mib for i in combo), "tuned": False})
    rows.sort(key=lambda row: -row["gap"])
    if tune:
        for row in rows[:tune_top]:
            if len(row["indices"]) > 1:
                row["weights"], row["gap"] = tune_weights(cached, row["indices"])
                row["tuned"] = True
        rows.sort(key=lambda row: -row["gap"])
    for row in rows:
        row["members"] = "".join(candidates[i].letter or "?" for i in row["indices"])
        row["best_member_gap"] = max(candidates[i].gap for i in row["indices"])
    return rows, cached, candidates


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
