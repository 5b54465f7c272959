"""Scoring many checkpoints at once: each evaluation a Ray task, where the GPUs are.

The zoo scores every checkpoint of every model, then averaged ranges around each model's
best, then each model's choice on the report files. Every one of these is an independent
`Evaluation` (one checkpoint, or the mean of a few); `score` runs them as Ray tasks, as many
at once as the cluster holds (a fraction of a GPU each where there are GPUs, a CPU each on a
local Ray), or one after another in this process (`parallel=False`, or no Ray running).
Both give the same GAPs: the same weights and the same deterministic forward pass.

Training scores its own checkpoints first: rank 0 evaluates each checkpoint it writes on the
run's `choose` files (its split.json) and records the metrics in the checkpoint's state.json
(`checkpoint.SCORES_KEY`), keyed by `holdout.data_key` of those files. The zoo reads such a
score instead of evaluating the checkpoint again when the key matches (the same content, the
whole files), so it evaluates only what training could not: averaged ranges, EMA weights and
the report files.

The zoo keeps every evaluation it ran in `<out>/scores.json` (`ScoreCache`), keyed by the
content identity of the checkpoints' files and of the data, and reads it when it is built
again in the same place: the distill stage rebuilds the zoo of a whole sweep to add its
students, and on the real set each evaluation of the validate holdout takes minutes, so only
the students' are run. A checkpoint or data file rewritten since gives another key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

GPU_FRACTION = 0.25  # an evaluation's share of a GPU: a forward pass of batch 256 needs little
SCORES_JSON = "scores.json"  # in the zoo's out: every evaluation it ran, keyed by what it read


@dataclasses.dataclass(frozen=True)
class Evaluation:
    model: str
    paths: tuple[str, ...]  # one checkpoint, or several to average
    data: tuple[str, ...]
    max_batches: int | None = None

    @property
    def label(self) -> str:
        return f"{self.model} ({len(self.paths)} checkpoint{'s' if len(self.paths) > 1 else ''})"


def evaluate_one(evaluation: Evaluation) -> dict:
    """{gap, hit_at_one, perr, examples, seconds} of the checkpoint or of the average of several."""
    from raytrain8m.records.checkpoint import load_checkpoint
    from raytrain8m.records.evaluate import evaluate, model_from_tensors, predictor
    from raytrain8m.select.average import average_tensors, model_tensors

    started = time.perf_counter()
    if len(evaluation.paths) == 1:
        checkpoint = load_checkpoint(evaluation.paths[0], weights_only=True)
        config, tensors = checkpoint.config, model_tensors(checkpoint)
    else:
        config, tensors, _ = average_tensors(list(evaluation.paths))
    metrics = evaluate(predictor(model_from_tensors(config, tensors)), list(evaluation.data), config.num_classes,
                       max_batches=evaluation.max_batches, progress=False)
    return {**{key: value for key, value in metrics.items() if value is not None},
            "seconds": time.perf_counter() - started}


def _remote_options() -> dict:
    import ray

    if ray.cluster_resources().get("GPU", 0) > 0:
        return {"num_gpus": GPU_FRACTION, "num_cpus": 1}
    return {"num_cpus": 1}


def score(evaluations: Sequence[Evaluation], parallel: bool = True) -> list[dict]:
    """Each evaluation's metrics, in order; Ray tasks at once when `parallel` and Ray is up."""
    if not evaluations:
        return []
    import ray

    if parallel and ray.is_initialized():
        task = ray.remote(evaluate_one).options(**_remote_options(), max_retries=2)
        return ray.get([task.remote(evaluation) for evaluation in evaluations])
    return [evaluate_one(evaluation) for evaluation in evaluations]


def checkpoint_identity(directory: str | os.PathLike) -> list[dict]:
    """What evaluating a checkpoint reads: its config and weight files, each by
    `files.file_identity` (state.json is left out: training adds its scores to it)."""
    import pyarrow.fs as pafs

    from raytrain8m.data.files import file_identity
    from raytrain8m.records.checkpoint import STATE_JSON

    filesystem = pafs.LocalFileSystem()
    files = sorted(path for path in Path(directory).iterdir() if path.is_file() and path.name != STATE_JSON)
    return [{"name": path.name, **file_identity(filesystem, str(path))} for path in files]


class ScoreCache:
    """The evaluations a zoo ran in its out directory (`SCORES_JSON`): each one's metrics under a
    key of the content identities of its checkpoints (in order: an average's members) and of
    its data (`holdout.data_key`, with its batch limit). Written whole after each round."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._scores = self._load()
        self._data_keys: dict[tuple, str] = {}
        self._checkpoints: dict[str, list[dict]] = {}  # a checkpoint is in many averaged ranges

    def _load(self) -> dict[str, dict]:
        if not self.path.is_file():
            return {}
        try:
            scores = json.loads(self.path.read_text())
        except (OSError, ValueError) as error:
            log.warning("%s: unreadable (%s); its scores are measured again", self.path, error)
            return {}
        return scores if isinstance(scores, dict) else {}

    def data_key(self, data: Sequence[str], max_batches: int | None = None) -> str:
        """`holdout.data_key`, once per file set and batch limit (3,844 files' identities are
        read once a build, for training's recorded scores and for every evaluation's key)."""
        from raytrain8m.records.holdout import data_key

        memo = (tuple(data), max_batches)
        if memo not in self._data_keys:
            self._data_keys[memo] = data_key(list(data), max_batches)
        return self._data_keys[memo]

    def key(self, evaluation: Evaluation) -> str:
        for path in evaluation.paths:
            if path not in self._checkpoints:
                self._checkpoints[path] = checkpoint_identity(path)
        text = json.dumps({"checkpoints": [self._checkpoints[path] for path in evaluation.paths],
                           "data": self.data_key(evaluation.data, evaluation.max_batches)}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        score = self._scores.get(key)
        return dict(score) if isinstance(score, dict) and "gap" in score else None

    def put(self, key: str, metrics: dict) -> None:
        self._scores[key] = metrics

    def save(self) -> None:
        from raytrain8m.runtime import atomic

        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(self.path, self._scores, sort_keys=True)


@dataclasses.dataclass
class Timing:
    """The zoo's scoring: its wall time against the sum of its evaluations' times."""

    evaluations: int = 0
    evaluation_s: float = 0.0
    wall_s: float = 0.0
    from_training: int = 0  # checkpoint scores read from their state.json instead of evaluated
    from_earlier: int = 0   # scores read from an earlier build's ScoreCache instead of evaluated

    def add(self, results: Sequence[dict], wall_s: float) -> None:
        self.evaluations += len(results)
        self.evaluation_s += sum(result["seconds"] for result in results)
        self.wall_s += wall_s

    def describe(self) -> str:
        speedup = self.evaluation_s / self.wall_s if self.wall_s else 0.0
        earlier = f"{self.from_earlier} from an earlier scoring, " if self.from_earlier else ""
        return (f"{self.from_training} checkpoint scores from training, {earlier}{self.evaluations} evaluations: "
                f"{self.evaluation_s:.1f} s of evaluation in {self.wall_s:.1f} s wall ({speedup:.1f}x)")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "speedup": self.evaluation_s / self.wall_s if self.wall_s else 0.0}

    @classmethod
    def from_dict(cls, values: dict) -> "Timing":
        """The timing `to_dict` wrote (zoo.json's `timing`); what it lacks counts as 0."""
        return cls(**{field.name: values[field.name] for field in dataclasses.fields(cls) if field.name in values})


def timed_score(evaluations: Sequence[Evaluation], timing: Timing, parallel: bool = True,
                cache: ScoreCache | None = None) -> list[dict]:
    """`score`, timed into `timing`; with a `cache`, what it holds is read, not evaluated, and
    what is evaluated is added to it."""
    keys = [cache.key(evaluation) for evaluation in evaluations] if cache else [None] * len(evaluations)
    known = [cache.get(key) if cache else None for key in keys]
    todo = [index for index, metrics in enumerate(known) if metrics is None]
    started = time.perf_counter()
    results = score([evaluations[index] for index in todo], parallel)
    timing.add(results, time.perf_counter() - started)
    timing.from_earlier += len(evaluations) - len(todo)
    for index, result in zip(todo, results):
        known[index] = result
        if cache:
            cache.put(keys[index], result)
    if cache and todo:
        cache.save()
    return known
