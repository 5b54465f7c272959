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
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Sequence

log = logging.getLogger(__name__)

GPU_FRACTION = 0.25  # an evaluation's share of a GPU: a forward pass of batch 256 needs little


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


@dataclasses.dataclass
class Timing:
    """The zoo's scoring: its wall time against the sum of its evaluations' times."""

    evaluations: int = 0
    evaluation_s: float = 0.0
    wall_s: float = 0.0
    from_training: int = 0  # checkpoint scores read from their state.json instead of evaluated

    def add(self, results: Sequence[dict], wall_s: float) -> None:
        self.evaluations += len(results)
        self.evaluation_s += sum(result["seconds"] for result in results)
        self.wall_s += wall_s

    def describe(self) -> str:
        speedup = self.evaluation_s / self.wall_s if self.wall_s else 0.0
        return (f"{self.from_training} checkpoint scores from training, {self.evaluations} evaluations: "
                f"{self.evaluation_s:.1f} s of evaluation in {self.wall_s:.1f} s wall ({speedup:.1f}x)")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "speedup": self.evaluation_s / self.wall_s if self.wall_s else 0.0}


def timed_score(evaluations: Sequence[Evaluation], timing: Timing, parallel: bool = True) -> list[dict]:
    started = time.perf_counter()
    results = score(evaluations, parallel)
    timing.add(results, time.perf_counter() - started)
    return results
