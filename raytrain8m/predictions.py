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
union of its members' top `CANDIDATES` classes, scored exactly. A class outside every
member's top list scores at most Σ wᵢ·tᵢ (tᵢ: member i's `CANDIDATES`-th value; float
addition and scaling by w ≥ 0 are monotone, so this bound holds in float32 too). A video
whose 20th best candidate beats that bound has its exact top 20 among the candidates; the
others (rare when members agree, as trained models do) are scored on all classes.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from raytrain8m.errors import ConfigError
from raytrain8m.metrics import pooled_ap

STORE_JSON = "store.json"
CANDIDATES = 64  # per member and video: the classes a combination's top 20 is looked for in
TOP_K = 20       # GAP@20
CHUNK_VIDEOS = 1024
Combination = tuple[Sequence[int], Sequence[float]]  # (member indices, weights)


def _atomic_json(path: Path, payload: dict) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(payload, indent=2) + "\n")
    staging.replace(path)


class MemberWriter:
    """Appends one member's predictions batch by batch; `close` makes them part of the store.
    The first member also writes the labels and ids; later ones must see the same videos."""

    def __init__(self, store: "PredictionStore", name: str):
        self.store, self.name = store, name
        self.index = len(store.members)
        self.first = self.index == 0
        self.videos = 0
        self._digest = hashlib.sha256()
        self._files = {suffix: open(store.path / f".{self.index}.{suffix}.tmp", "wb") for suffix in ("f16", "top")}
        self._label_counts: list[np.ndarray] = []
        self._label_indices: list[np.ndarray] = []
        self._ids = open(store.path / ".ids.txt.tmp", "w") if self.first else None

    def add(self, predictions: np.ndarray, labels: np.ndarray, ids: Iterable[str]) -> None:
        predictions = np.asarray(predictions)
        if predictions.ndim != 2 or predictions.shape[1] != self.store.classes:
            raise ConfigError(f"{self.name}: predictions of shape {predictions.shape}, expected "
                              f"[videos, {self.store.classes}]")
        values = predictions.astype(np.float16)
        self._files["f16"].write(values.tobytes())
        self._files["top"].write(_top_classes(values, self.store.candidates).tobytes())
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
        for handle in self._files.values():
            handle.close()
        store = self.store
        if self.first:
            self._ids.close()
            counts = np.concatenate(self._label_counts) if self._label_counts else np.zeros(0, np.int64)
            indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            indices = np.concatenate(self._label_indices) if self._label_indices else np.zeros(0, np.int32)
            np.save(store.path / "label_indptr.npy", indptr)
            np.save(store.path / "label_indices.npy", indices)
            (store.path / ".ids.txt.tmp").replace(store.path / "ids.txt")
            store.meta.update(videos=self.videos, ids_sha256=self._digest.hexdigest())
        elif self.videos != store.videos or self._digest.hexdigest() != store.meta["ids_sha256"]:
            raise ConfigError(f"member {self.name} was predicted on other videos ({self.videos}) than the "
                              f"first member ({store.videos}), or in another order")
        for suffix in ("f16", "top"):
            (store.path / f".{self.index}.{suffix}.tmp").replace(store.path / f"{self.index}.{suffix}")
        store.meta["members"].append(self.name)
        _atomic_json(store.path / STORE_JSON, store.meta)

    def __enter__(self) -> "MemberWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            for handle in self._files.values():
                handle.close()
            if self._ids:
                self._ids.close()


def _top_classes(values: np.ndarray, count: int) -> np.ndarray:
    """Each row's `count` largest classes (in no order), int16/int32."""
    dtype = np.int16 if values.shape[1] <= np.iinfo(np.int16).max else np.int32
    if count >= values.shape[1]:
        return np.broadcast_to(np.arange(values.shape[1], dtype=dtype), values.shape).copy()
    as32 = values.astype(np.float32)
    return np.argpartition(as32, values.shape[1] - count, axis=1)[:, -count:].astype(dtype)


class PredictionStore:
    """A directory of member predictions on one split (see the module's docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        record = self.path / STORE_JSON
        if not record.is_file():
            raise ConfigError(f"{self.path}: no prediction store ({STORE_JSON} missing)")
        self.meta = json.loads(record.read_text())
        self._labels: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def create(cls, path: str | os.PathLike, num_classes: int, candidates: int = CANDIDATES) -> "PredictionStore":
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if (path / STORE_JSON).exists():
            raise ConfigError(f"{path}: a prediction store is already there")
        _atomic_json(path / STORE_JSON, {"classes": num_classes, "videos": 0, "members": [],
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
        k = min(TOP_K, self.classes)
        confidence = [np.empty(self.videos * k, np.float32) for _ in combinations]
        hits = [np.empty(self.videos * k, bool) for _ in combinations]
        needed = sorted({index for indices, _ in combinations for index in indices})
        for start, stop in self.chunks(chunk_videos):
            chunk = _Chunk({m: self.predictions(m, start, stop) for m in needed},
                           {m: self.top_classes(m, start, stop) for m in needed})
            labels = self.labels(start, stop)
            rows = np.arange(stop - start)[:, None]
            for number, (indices, weights) in enumerate(combinations):
                scores, classes = chunk.top_k(indices, weights, k)
                confidence[number][start * k:stop * k] = scores.ravel()
                hits[number][start * k:stop * k] = labels[rows, classes].ravel()
        positives = self.positives
        return [pooled_ap(c, h, positives) for c, h in zip(confidence, hits)]


def _weighted(parts: Iterable[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Σ float32(w)·part in the given order: the same float32 operations for every use."""
    total = None
    for weight, part in zip(weights, parts):
        term = np.float32(weight) * part.astype(np.float32)
        total = term if total is None else total + term
    return total


class _Chunk:
    """The members' float16 predictions and top classes for one chunk of videos."""

    def __init__(self, values: dict[int, np.ndarray], tops: dict[int, np.ndarray]):
        self.values, self.tops = values, tops
        self.videos, self.classes = next(iter(values.values())).shape
        self.every_class = next(iter(tops.values())).shape[1] >= self.classes
        # a member's CANDIDATES-th value: no class outside its top list scores more
        self.bounds = {m: np.take_along_axis(values[m], tops[m].astype(np.intp), axis=1).min(axis=1)
                       for m in values}
        self._row_offsets = (np.arange(self.videos, dtype=np.intp) * self.classes)[:, None]
        self._unions: dict[tuple[int, ...], np.ndarray] = {}

    def _union(self, members: tuple[int, ...]) -> np.ndarray:
        """Each row's candidate classes sorted, a repeat replaced by -1 (kept per member set)."""
        if members not in self._unions:
            candidates = np.sort(np.concatenate([self.tops[m] for m in members], axis=1).astype(np.intp), axis=1)
            candidates[:, 1:][candidates[:, 1:] == candidates[:, :-1]] = -1
            self._unions[members] = candidates
        return self._unions[members]

    def top_k(self, indices: Sequence[int], weights: Sequence[float], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each video's k best (score, class) of the combination; exact (see the module docstring)."""
        candidates = self._union(tuple(sorted(set(indices))))
        safe = np.maximum(candidates, 0)
        flat = self._row_offsets + safe
        scores = _weighted((self.values[m].ravel().take(flat) for m in indices), weights)
        scores[candidates < 0] = -np.inf
        width = scores.shape[1]
        order = np.argpartition(scores, width - k, axis=1)
        best = order[:, -k:]
        top_scores = np.take_along_axis(scores, best, axis=1)
        top_classes = np.take_along_axis(safe, best, axis=1)
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
