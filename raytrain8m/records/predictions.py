"""Member predictions on a split, kept once per member as float16 on disk and scored in chunks.

Ensemble search and weight tuning need every member's predictions on the same videos. On
YouTube-8M's validate set that is 1.1 M × 3862 values a member: 17 GB as float32 in RAM,
8.5 GB as float16 on disk. A `PredictionStore` directory holds, per member, its float16
predictions (`<i>.f16`, row-major [videos, classes]) and each video's `CANDIDATES` most
confident classes (`<i>.top`, `CANDIDATES` of them), written batch by batch; the labels (sparse), the video ids
and `store.json`. Readers map one chunk of videos at a time (the mapping is closed after
each chunk, so the resident set stays a chunk), and `gaps` scores many weighted
combinations chunk by chunk in memory bounded by `memory_mib`, whatever their number.

Exact top 20 of a combination without sorting its 3862 classes: the candidates are the
union of the members' top `CANDIDATES` classes (gathered once a chunk for all
combinations), scored exactly. A class outside every
member's top list scores at most Σ wᵢ·tᵢ (tᵢ: member i's `CANDIDATES`-th value; float
addition and scaling by w ≥ 0 are monotone, so this bound holds in float32 too). A video
whose 20th best candidate beats that bound has its exact top 20 among the candidates; the
others (rare when members agree, as trained models do) are scored on all classes.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from raytrain8m.records.metrics import pooled_ap
from raytrain8m.runtime import atomic
from raytrain8m.runtime.errors import BudgetError, ConfigError

STORE_JSON = "store.json"
CANDIDATES = 64  # per member and video: the classes a combination's top 20 is looked for in
TOP_K = 20       # GAP@20
CHUNK_VIDEOS = 1024
Combination = tuple[Sequence[int], Sequence[float]]  # (member indices, weights)


class MemberWriter:
    """Appends one member's predictions batch by batch; `close` makes them part of the store.
    The first member also writes the labels and ids; later ones must see the same videos."""

    def __init__(self, store: "PredictionStore", name: str):
        self.store, self.name = store, name
        self.index = len(store.members) + store.open_writers  # several may be open at once
        store.open_writers += 1
        self.first = self.index == 0
        self.videos = 0
        self._digest = hashlib.sha256()
        self._staged = {suffix: atomic.staged_file(store.path / f"{self.index}.{suffix}", "wb") for suffix in ("f16", "top")}
        self._files = {suffix: staged.file for suffix, staged in self._staged.items()}
        self._label_counts: list[np.ndarray] = []
        self._label_indices: list[np.ndarray] = []
        self._ids_staged = atomic.staged_file(store.path / "ids.txt", "w") if self.first else None
        self._ids = self._ids_staged.file if self.first else None

    def add(self, predictions: np.ndarray, labels: np.ndarray, ids: Iterable[str]) -> None:
        predictions = np.asarray(predictions)
        if predictions.ndim != 2 or predictions.shape[1] != self.store.classes:
            raise ConfigError(f"{self.name}: predictions of shape {predictions.shape}, expected "
                              f"[videos, {self.store.classes}]")
        values = predictions.astype(np.float16)
        self._files["f16"].write(values.tobytes())
        # float32 → float16 rounding is monotone: float32's top classes are float16's too
        ranked = predictions if predictions.dtype == np.float32 else values
        self._files["top"].write(_top_classes(ranked, self.store.candidates).tobytes())
        ids = [str(i) for i in ids]
        if len(ids) != len(values):
            raise ConfigError(f"{self.name}: {len(ids)} ids for {len(values)} videos")
        self._digest.update("\n".join(ids).encode() + b"\n")
        if self.first:
            labels = np.asarray(labels) > 0
            self._label_counts.append(labels.sum(axis=1))
            self._label_indices.append(np.nonzero(labels)[1].astype(np.int32))
            self._ids.write("".join(f"{i}\n" for i in ids))
        self.videos += len(values)

    def close(self) -> None:
        """Writers opened together close in the order they were opened (the first one's videos
        are the reference)."""
        store = self.store
        store.open_writers -= 1
        try:
            self._commit()
        except BaseException:
            self._discard()
            raise
        store.meta["members"].append(self.name)
        atomic.write_json(store.path / STORE_JSON, store.meta)

    def _commit(self) -> None:
        store = self.store
        if self.index != len(store.members):
            raise ConfigError(f"member {self.name} closed before the members opened ahead of it")
        if self.first:
            counts = np.concatenate(self._label_counts) if self._label_counts else np.zeros(0, np.int64)
            indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            indices = np.concatenate(self._label_indices) if self._label_indices else np.zeros(0, np.int32)
            for name, values in (("label_indptr.npy", indptr), ("label_indices.npy", indices)):
                with atomic.staged_file(store.path / name, "wb") as out:
                    np.save(out, values)
            self._ids_staged.commit()
            store.meta.update(videos=self.videos, ids_sha256=self._digest.hexdigest())
        elif self.videos != store.videos or self._digest.hexdigest() != store.meta["ids_sha256"]:
            raise ConfigError(f"member {self.name} was predicted on other videos ({self.videos}) than the "
                              f"first member ({store.videos}), or in another order")
        for staged in self._staged.values():
            staged.commit()

    def _discard(self) -> None:
        for staged in (*self._staged.values(), self._ids_staged):
            if staged is not None:
                staged.discard()

    def __enter__(self) -> "MemberWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.store.open_writers -= 1
            self._discard()


def _top_classes(values: np.ndarray, count: int) -> np.ndarray:
    """Each row's `count` largest classes (in no order), int16/int32."""
    dtype = np.int16 if values.shape[1] <= np.iinfo(np.int16).max else np.int32
    if count >= values.shape[1]:
        return np.broadcast_to(np.arange(values.shape[1], dtype=dtype), values.shape).copy()
    as32 = values if values.dtype == np.float32 else values.astype(np.float32)
    return np.argpartition(as32, values.shape[1] - count, axis=1)[:, -count:].astype(dtype)


class PredictionStore:
    """A directory of member predictions on one split (see the module's docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        record = self.path / STORE_JSON
        if not record.is_file():
            raise ConfigError(f"{self.path}: no prediction store ({STORE_JSON} missing)")
        self.meta = json.loads(record.read_text())
        self.open_writers = 0
        self._labels: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def create(cls, path: str | os.PathLike, num_classes: int, candidates: int = CANDIDATES) -> "PredictionStore":
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if (path / STORE_JSON).exists():
            raise ConfigError(f"{path}: a prediction store is already there")
        atomic.write_json(path / STORE_JSON, {"classes": num_classes, "videos": 0, "members": [],
                                              "candidates": min(candidates, num_classes)})
        return cls(path)

    @classmethod
    def from_arrays(cls, path: str | os.PathLike, predictions: Sequence[np.ndarray], labels: np.ndarray,
                    ids: Sequence[str] | None = None, names: Sequence[str] | None = None,
                    candidates: int = CANDIDATES) -> "PredictionStore":
        """A store of in-memory predictions (tests, small sets)."""
        store = cls.create(path, np.asarray(labels).shape[1], candidates)
        ids = [str(i) for i in range(len(labels))] if ids is None else ids
        for index, values in enumerate(predictions):
            with store.writer(names[index] if names else str(index)) as writer:
                writer.add(values, labels, ids)
        return store

    def writer(self, name: str) -> MemberWriter:
        return MemberWriter(self, name)

    @property
    def classes(self) -> int:
        return int(self.meta["classes"])

    @property
    def videos(self) -> int:
        return int(self.meta["videos"])

    @property
    def members(self) -> list[str]:
        return list(self.meta["members"])

    @property
    def candidates(self) -> int:
        return int(self.meta["candidates"])

    def ids(self) -> list[str]:
        return (self.path / "ids.txt").read_text().splitlines()

    def chunks(self, chunk_videos: int = CHUNK_VIDEOS) -> Iterator[tuple[int, int]]:
        for start in range(0, self.videos, chunk_videos):
            yield start, min(start + chunk_videos, self.videos)

    def _read(self, name: str, dtype, width: int, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a row-major file, through a mapping closed before returning."""
        itemsize = np.dtype(dtype).itemsize
        mapped = np.memmap(self.path / name, dtype=dtype, mode="r", offset=start * width * itemsize,
                           shape=(stop - start, width))
        rows = np.array(mapped)
        del mapped  # unmaps: the pages leave this process's resident set
        return rows

    def predictions(self, member: int, start: int, stop: int) -> np.ndarray:
        """float16 [stop - start, classes]."""
        return self._read(f"{member}.f16", np.float16, self.classes, start, stop)

    def top_classes(self, member: int, start: int, stop: int) -> np.ndarray:
        dtype = np.int16 if self.classes <= np.iinfo(np.int16).max else np.int32
        return self._read(f"{member}.top", dtype, self.candidates, start, stop)

    def _label_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._labels is None:
            self._labels = (np.load(self.path / "label_indptr.npy"), np.load(self.path / "label_indices.npy"))
        return self._labels

    def labels(self, start: int, stop: int) -> np.ndarray:
        """bool [stop - start, classes], rebuilt from the sparse labels."""
        indptr, indices = self._label_arrays()
        dense = np.zeros((stop - start, self.classes), dtype=bool)
        rows = np.repeat(np.arange(stop - start), np.diff(indptr[start:stop + 1]))
        dense[rows, indices[indptr[start]:indptr[stop]]] = True
        return dense

    @property
    def positives(self) -> int:
        return int(self._label_arrays()[0][-1])

    # -- scoring ---------------------------------------------------------------------------------

    def gap(self, weights: Sequence[float], indices: Sequence[int] | None = None) -> float:
        indices = list(range(len(self.members))) if indices is None else list(indices)
        return self.gaps([(indices, weights)])[0]

    def gaps(self, combinations: Sequence[Combination], chunk_videos: int = CHUNK_VIDEOS,
             memory_mib: float = 512) -> list[float]:
        """GAP@20 of each weighted combination, exactly as `metrics.gap` of
        Σ float32(wᵢ)·predictionsᵢ (float16 read as float32, summed in member order). Each
        combination keeps its videos' top 20 (5 bytes each) until its GAP is known; as many are
        scored per pass over the store as fit in `memory_mib`."""
        if not self.videos:
            raise ConfigError(f"{self.path}: the prediction store holds no videos")
        combinations = [(list(indices), [float(w) for w in weights]) for indices, weights in combinations]
        for indices, weights in combinations:
            if len(indices) != len(weights) or not indices or any(w < 0 for w in weights):
                raise ConfigError(f"bad combination {indices} with weights {weights}")
        per_combination = self.videos * min(TOP_K, self.classes) * 5
        group = max(1, int(memory_mib * 2**20 // per_combination))
        results: list[float] = []
        for begin in range(0, len(combinations), group):
            results.extend(self._gaps_pass(combinations[begin:begin + group], chunk_videos))
        return results

    def _gaps_pass(self, combinations: list[tuple[list[int], list[float]]], chunk_videos: int) -> list[float]:
        from concurrent.futures import ThreadPoolExecutor

        k = min(TOP_K, self.classes)
        confidence = [np.empty(self.videos * k, np.float32) for _ in combinations]
        hits = [np.empty(self.videos * k, bool) for _ in combinations]
        needed = sorted({index for indices, _ in combinations for index in indices})
        # numpy's gathers, partitions and sorts release the GIL: combinations run on every core
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            for start, stop in self.chunks(chunk_videos):
                chunk = _Chunk({m: self.predictions(m, start, stop) for m in needed},
                               {m: self.top_classes(m, start, stop) for m in needed})
                labels = self.labels(start, stop)
                rows = np.arange(stop - start)[:, None]

                def score(number: int) -> None:
                    indices, weights = combinations[number]
                    scores, classes = chunk.top_k(indices, weights, k)
                    confidence[number][start * k:stop * k] = scores.ravel()
                    hits[number][start * k:stop * k] = labels[rows, classes].ravel()

                list(pool.map(score, range(len(combinations))))
        positives = self.positives
        return [pooled_ap(c, h, positives) for c, h in zip(confidence, hits)]


def combinations(sizes_mib: Sequence[float], budget_mib: float, max_members: int,
                 groups: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """Every combination of 1..max_members members whose sizes fit the budget; with `groups`
    (candidate → model, e.g. one model at two precisions) at most one candidate of each group."""
    found = [combo for size in range(1, max_members + 1)
             for combo in itertools.combinations(range(len(sizes_mib)), size)
             if sum(sizes_mib[i] for i in combo) <= budget_mib
             and (groups is None or len({groups[i] for i in combo}) == len(combo))]
    if not found:
        raise BudgetError(f"no zoo model fits in {budget_mib:g} MiB (smallest {min(sizes_mib):.2f} MiB)")
    return found


def rank_combinations(store: PredictionStore, sizes_mib: Sequence[float], budget_mib: float,
                      max_members: int = 4, tune: bool = False, tune_top: int = 5,
                      letters: Sequence[str] | None = None, memory_mib: float = 512,
                      groups: Sequence[int] | None = None) -> list[dict]:
    """The paper's Table 2 from a prediction store: every combination under the budget with equal
    weights, scored chunk by chunk (memory bounded by `memory_mib`, whatever their number); with
    `tune`, the `tune_top` best are re-ranked with tuned weights. `groups`: see `combinations`."""
    letters = list(letters) if letters is not None else store.members
    combos = combinations(sizes_mib, budget_mib, max_members, groups)
    singles = [(index,) for index in range(len(sizes_mib))]
    scored = combos + [combo for combo in singles if combo not in combos]
    gaps = store.gaps([(combo, [1.0 / len(combo)] * len(combo)) for combo in scored], memory_mib=memory_mib)
    by_combo = dict(zip(scored, gaps))
    rows = [{"indices": combo, "weights": [1.0 / len(combo)] * len(combo), "gap": by_combo[combo],
             "size_mib": sum(sizes_mib[i] for i in combo), "tuned": False} for combo in combos]
    rows.sort(key=lambda row: -row["gap"])
    if tune:
        for row in rows[:tune_top]:
            if len(row["indices"]) > 1:
                row["weights"], row["gap"] = tune_weights(store, row["indices"])
                row["tuned"] = True
        rows.sort(key=lambda row: -row["gap"])
    for row in rows:
        row["members"] = "".join(letters[i] for i in row["indices"])
        row["best_member_gap"] = max(by_combo[(i,)] for i in row["indices"])
        row["member_gaps"] = [by_combo[(i,)] for i in row["indices"]]
    return rows


def tune_weights(store: PredictionStore, indices: Sequence[int] | None = None,
                 start: Sequence[float] | None = None, steps: Sequence[float] = (0.1, 0.05, 0.02, 0.01),
                 max_rounds: int = 30) -> tuple[list[float], float]:
    """Coordinate search on the simplex: each round scores every move of `step` of weight from
    one member to another in one pass over the store, and takes the best move while GAP rises."""
    indices = list(range(len(store.members)) if indices is None else indices)
    count = len(indices)
    weights = np.array(start if start is not None else [1.0 / count] * count, dtype=np.float64)
    best = store.gap(weights, indices)
    for step in steps:
        for _ in range(max_rounds):
            moves = []
            for gain, loss in itertools.permutations(range(count), 2):
                if weights[loss] < step - 1e-12:
                    continue
                candidate = weights.copy()
                candidate[gain] += step
                candidate[loss] -= step
                moves.append(candidate)
            if not moves:
                break
            scores = store.gaps([(indices, np.maximum(move, 0.0)) for move in moves])
            top = int(np.argmax(scores))
            if scores[top] <= best + 1e-9:
                break
            weights, best = moves[top], scores[top]
    return [round(float(w), 6) for w in weights], best


def _weighted(parts: Iterable[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Σ float32(w)·part in the given order: the same float32 operations for every use."""
    total = None
    for weight, part in zip(weights, parts):
        term = np.float32(weight) * part.astype(np.float32)
        total = term if total is None else total + term
    return total


class _Chunk:
    """One chunk of videos: the members' float16 predictions, and every member's value at the
    union of all their top classes (gathered once, shared by every combination)."""

    def __init__(self, values: dict[int, np.ndarray], tops: dict[int, np.ndarray]):
        self.values = values
        self.videos, self.classes = next(iter(values.values())).shape
        self.every_class = next(iter(tops.values())).shape[1] >= self.classes
        # a member's CANDIDATES-th value: no class outside its top list scores more
        self.bounds = {m: np.take_along_axis(values[m], tops[m].astype(np.intp), axis=1).min(axis=1)
                       for m in values}
        union = np.sort(np.concatenate(list(tops.values()), axis=1).astype(np.intp), axis=1)
        union[:, 1:][union[:, 1:] == union[:, :-1]] = -1
        union.sort(axis=1)  # repeats (-1) first, then the distinct classes
        width = int((union >= 0).sum(axis=1).max())
        union = union[:, union.shape[1] - width:]
        self.invalid = union < 0
        self.classes_at = np.maximum(union, 0)
        flat = (np.arange(self.videos, dtype=np.intp) * self.classes)[:, None] + self.classes_at
        self.gathered = {m: values[m].ravel().take(flat).astype(np.float32) for m in values}

    def top_k(self, indices: Sequence[int], weights: Sequence[float], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each video's k best (score, class) of the combination; exact (see the module docstring)."""
        scores = _weighted((self.gathered[m] for m in indices), weights)
        scores[self.invalid] = -np.inf
        width = scores.shape[1]
        order = np.argpartition(scores, width - k, axis=1)
        best = order[:, -k:]
        top_scores = np.take_along_axis(scores, best, axis=1)
        top_classes = np.take_along_axis(self.classes_at, best, axis=1)
        if self.every_class:
            return top_scores, top_classes
        kth = np.take_along_axis(scores, order[:, width - k:width - k + 1], axis=1)[:, 0]
        rest = np.flatnonzero(kth <= _weighted((self.bounds[m] for m in indices), weights))
        if len(rest):  # a class outside the candidates might be in these videos' top k: score them all
            dense = _weighted((self.values[m][rest] for m in indices), weights)
            best = np.argpartition(dense, self.classes - k, axis=1)[:, -k:]
            top_scores[rest] = np.take_along_axis(dense, best, axis=1)
            top_classes[rest] = best
        return top_scores, top_classes
