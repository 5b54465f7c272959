"""Test-set predictions in the Kaggle format, with a pool of Ray actors across the cluster.

One input file is one unit of work: a pool of actors (each loads the exported model once,
on a GPU where asked) turns a file into its CSV rows; the driver writes each file's rows
to `OUT.parts/` as they arrive, so a restart redoes only unfinished files, then merges the
parts into OUT atomically. A part is kept only for the very input it was made from and the
very model: each part records its input file's identity (size, mtime, a hash of its head and
tail), the parts directory the model's; a file replaced at the same path, or another model, is
predicted again and the log says why. The model travels through Ray's object store, so
workers need no shared filesystem for it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from raytrain8m.compose.export import ENSEMBLE_JSON, META_DIR, META_PREFIX, SAVED_MODEL
from raytrain8m.data.schema import DataError
from raytrain8m.runtime import atomic
from raytrain8m.runtime.errors import ConfigError
from raytrain8m.runtime.gpus import visible_gpus

log = logging.getLogger(__name__)

HEADER = "VideoId,LabelConfidencePairs"
TOP_K = 20
SOURCES = ("saved_model", "meta_graph")
_URI = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")

Predict = Callable[[np.ndarray, np.ndarray], np.ndarray]


def load_model(model_dir: str | os.PathLike, source: str = "saved_model") -> Predict:
    """(frames, num_frames) → predictions from an export: its SavedModel or its TF1 MetaGraph."""
    from raytrain8m.runtime.lazy import tensorflow as tf

    model_dir = Path(model_dir)
    if source == "saved_model":
        serve = tf.saved_model.load(str(model_dir / SAVED_MODEL)).signatures["serving_default"]
        return lambda frames, num_frames: serve(frames=tf.constant(frames, tf.float32),
                                                num_frames=tf.constant(num_frames, tf.int32))["predictions"].numpy()
    if source == "meta_graph":  # exactly as the starter's inference.py
        prefix = str(model_dir / META_DIR / META_PREFIX)
        graph = tf.Graph()
        with graph.as_default():
            saver = tf.compat.v1.train.import_meta_graph(prefix + ".meta", clear_devices=True)
            session = tf.compat.v1.Session(graph=graph)
            saver.restore(session, prefix)
            inputs = tf.compat.v1.get_collection("input_batch_raw")[0]
            num_frames_input = tf.compat.v1.get_collection("num_frames")[0]
            predictions = tf.compat.v1.get_collection("predictions")[0]
            session.run(tf.compat.v1.local_variables_initializer())
        return lambda frames, num_frames: session.run(predictions, {inputs: frames, num_frames_input: num_frames})
    raise ConfigError(f"unknown model source {source!r}; choose one of {', '.join(SOURCES)}")


def format_rows(ids: Sequence[str], predictions: np.ndarray, top_k: int = TOP_K) -> list[str]:
    """`id,label conf label conf …`: the top_k most confident, most confident first, 6 decimals."""
    k = min(top_k, predictions.shape[1])
    top = np.argpartition(-predictions, k - 1, axis=1)[:, :k]
    rows = []
    for video_id, candidates, scores in zip(ids, top, predictions):
        order = candidates[np.lexsort((candidates, -scores[candidates]))]
        rows.append(f"{video_id}," + " ".join(f"{label} {scores[label]:.6f}" for label in order))
    return rows


def predict_file(predict: Predict, path: str, batch_size: int, num_classes: int,
                 skip_corrupt: bool = False) -> tuple[list[str], int]:
    """The file's CSV rows, and how many corrupt records `skip_corrupt` left out."""
    from raytrain8m.data.tfrecord import ReadStats
    from raytrain8m.records.evaluate import predict_batches

    rows, stats = [], ReadStats()
    for batch in predict_batches(predict, path, num_classes, batch_size, skip_corrupt=skip_corrupt, stats=stats,
                                 check_labels=False):
        if not all(batch.ids):
            raise DataError(path, None, "videos without an id; inference needs the `id` of every video")
        rows.extend(format_rows(batch.ids, batch.scores))
    return rows, stats.skipped


def _pack(model_dir: Path, source: str) -> dict[str, bytes]:
    root = model_dir / (SAVED_MODEL if source == "saved_model" else META_DIR)
    return {str(path.relative_to(model_dir)): path.read_bytes() for path in root.rglob("*") if path.is_file()}


class FilePredictor:
    """A Ray actor that turns one input file at a time into CSV rows.

    The model comes with each call, as a reference inside a list (passed as is, not fetched),
    and the first call loads it, as does the first after a restart. Taken by the constructor
    from the object store, it made Ray log an error for every actor: a restarted actor finds
    such arguments only while they live (Ray issue 53727); the driver holds this one throughout."""

    def __init__(self, source: str, batch_size: int, num_classes: int, use_gpu: bool = False,
                 skip_corrupt: bool = False):
        if use_gpu:
            visible_gpus("infer actor")
        self.source, self.batch_size, self.num_classes = source, batch_size, num_classes
        self.skip_corrupt = skip_corrupt
        self.model: Callable | None = None

    def _load(self, model_ref: list) -> Callable:
        import ray

        directory = Path(tempfile.mkdtemp(prefix="raytrain8m-model-"))
        for relative, payload in ray.get(model_ref[0]).items():
            target = directory / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(payload)
        return load_model(directory, self.source)

    def predict(self, path: str, model_ref: list) -> dict[str, Any]:
        """{path, text (its CSV rows), error ('' or why), record, videos, skipped} of one file; a
        DataError is returned, and raised by the driver naming the file."""
        if self.model is None:
            self.model = self._load(model_ref)
        try:
            rows, skipped = predict_file(self.model, path, self.batch_size, self.num_classes, self.skip_corrupt)
        except DataError as error:
            return {"path": path, "text": "", "error": error.why, "videos": 0, "skipped": 0,
                    "record": -1 if error.record is None else error.record}
        return {"path": path, "text": "".join(row + "\n" for row in rows), "error": "", "record": -1,
                "videos": len(rows), "skipped": skipped}


@contextlib.contextmanager
def _killed_at_exit(actors: list):
    """The actors killed (not restarted) when the block ends, however it ends."""
    import ray

    try:
        yield actors
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)


def _check_gpu_node() -> None:
    """Before loading the model on every actor: can TensorFlow on a GPU node see its GPU? (An
    actor's own check, in its constructor, reaches the driver only as text inside Ray's error.)"""
    import ray

    probe = ray.remote(num_cpus=0, num_gpus=1)(visible_gpus)
    try:
        ray.get(probe.remote("infer on a GPU node"))
    except ray.exceptions.RayTaskError as error:
        raise error.cause from None


@dataclasses.dataclass
class InferSummary:
    out: str
    files: int
    skipped: int
    processed: int
    videos: int
    seconds: float
    workers: int
    skipped_records: int = 0  # corrupt records left out (skip_corrupt), in the files predicted this time

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _input_files(data: str | Sequence[str]) -> dict[str, dict]:
    """{input file as a path/URI each reader can open again: its content identity}, sorted as the
    glob matched them. The identity (size, mtime, head/tail hash) keys the file's finished part."""
    from concurrent.futures import ThreadPoolExecutor

    from raytrain8m.data.files import expand, file_identity

    filesystem, paths = expand(data)
    first = data if isinstance(data, str) else os.fspath(list(data)[0])
    match = _URI.match(first)
    shown = paths
    if match and match.group(1).lower() != "file":
        shown = [f"{match.group(1)}://{path.lstrip('/')}" for path in paths]
    with ThreadPoolExecutor(max_workers=16) as pool:  # object stores: one round trip per file
        identities = list(pool.map(lambda path: file_identity(filesystem, path), paths))
    return dict(zip(shown, identities))


def _part_name(path: str) -> str:
    return f"{Path(path).name}-{hashlib.sha1(path.encode()).hexdigest()[:10]}.csv"


def _part_record(parts: Path, path: str) -> Path:
    """The part's provenance: the input path and the identity of the file it was predicted from."""
    return parts / (_part_name(path)[:-len(".csv")] + ".json")


def _finished(parts: Path, path: str, identity: dict) -> bool:
    """Is there a part of this very input file? A part of a changed file is removed, saying why."""
    from raytrain8m.data.files import identity_changes

    part, record = parts / _part_name(path), _part_record(parts, path)
    if not part.is_file():
        return False
    saved = json.loads(record.read_text()).get("identity") if record.is_file() else None
    if saved == identity:
        return True
    log.warning("%s changed since its predictions were made (%s); predicting it again",
                path, identity_changes(saved, identity))
    part.unlink()
    record.unlink(missing_ok=True)
    return False


def _prepare_parts(parts: Path, fingerprint: str) -> None:
    """The parts directory for this model; parts made by another model are discarded."""
    manifest = parts / "manifest.json"
    if parts.exists() and (not manifest.is_file() or json.loads(manifest.read_text()).get("model") != fingerprint):
        log.warning("%s holds parts made by another model (or its files changed since); starting over", parts)
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    if not manifest.is_file():
        atomic.write_text(manifest, json.dumps({"model": fingerprint}) + "\n")


def _fingerprint(model_dir: Path, source: str) -> str:
    """The model's identity: ensemble.json, and every file's size, mtime and head/tail hash."""
    import pyarrow.fs as pafs

    from raytrain8m.data.files import file_identity

    local = pafs.LocalFileSystem()
    ensemble = (model_dir / ENSEMBLE_JSON).read_bytes()
    stamp = [(str(p.relative_to(model_dir)), file_identity(local, str(p)))
             for p in sorted(model_dir.rglob("*")) if p.is_file()]
    return hashlib.sha1(ensemble + repr((source, stamp)).encode()).hexdigest()


def infer(model_dir: str | os.PathLike, data: str | Sequence[str], out: str | os.PathLike,
          batch_size: int = 256, workers: int | None = None, use_gpu: bool = False,
          source: str = "saved_model", progress: bool = True, track: bool = False,
          skip_corrupt: bool = False) -> InferSummary:
    """Predict every video of `data` with the export at `model_dir`; write the Kaggle CSV `out`.
    `track` logs the run to MLflow (stage `infer`: the model, data and CSV; files, videos, seconds,
    skipped_records). `skip_corrupt` leaves out corrupt records instead of failing the file."""
    import ray
    from ray.util import ActorPool
    from tqdm import tqdm

    from raytrain8m.runtime import localray

    started = time.monotonic()
    model_dir, out = Path(model_dir), Path(out)
    if not (model_dir / ENSEMBLE_JSON).is_file():
        raise ConfigError(f"{model_dir}: no {ENSEMBLE_JSON}; not an exported model (run jobs/ensemble.py)")
    if source not in SOURCES:
        raise ConfigError(f"unknown model source {source!r}; choose one of {', '.join(SOURCES)}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    from raytrain8m.runtime.cli import check_output
    check_output(out, directory=False)
    num_classes = int(json.loads((model_dir / ENSEMBLE_JSON).read_text())["num_classes"])
    identities = _input_files(data)
    files = list(identities)
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = out.with_name(out.name + ".parts")
    _prepare_parts(parts, _fingerprint(model_dir, source))
    pending = [path for path in files if not _finished(parts, path, identities[path])]
    log.info("%d input files, %d already done, %d to predict", len(files), len(files) - len(pending), len(pending))

    videos, pool, skipped_records = 0, 0, 0
    if pending:
        localray.start()
        resources = ray.cluster_resources()
        if use_gpu and resources.get("GPU", 0) < 1:
            raise ConfigError("--use-gpu, but the Ray cluster has no GPU")
        if use_gpu:
            _check_gpu_node()
        available = int(resources.get("GPU", 0)) if use_gpu else max(1, int(resources.get("CPU", 1)) // 2)
        pool = max(1, min(workers or available, len(pending)))
        model_ref = [ray.put(_pack(model_dir, source))]
        # a pool of actors, each file a task; a lost actor is restarted and its file tried again
        predictor = ray.remote(FilePredictor).options(num_cpus=1, num_gpus=1 if use_gpu else 0,
                                                      max_restarts=-1, max_task_retries=3)
        actors = [predictor.remote(source, batch_size, num_classes, use_gpu, skip_corrupt) for _ in range(pool)]
        results = ActorPool(actors).map_unordered(lambda actor, path: actor.predict.remote(path, model_ref),
                                                  pending)
        errors = []
        with tqdm(total=len(pending), desc="infer", unit="file", disable=not progress) as bar, \
                _killed_at_exit(actors):
            for result in results:
                if result["error"]:
                    errors.append(result)
                else:
                    atomic.write_text(parts / _part_name(result["path"]), result["text"])
                    atomic.write_text(_part_record(parts, result["path"]), json.dumps(
                        {"input": result["path"], "identity": identities[result["path"]]}) + "\n")
                    videos += int(result["videos"])
                    skipped_records += int(result["skipped"])
                bar.update(1)
        if errors:
            first = errors[0]
            more = f" (and {len(errors) - 1} more files failed)" if len(errors) > 1 else ""
            raise DataError(first["path"], None if first["record"] < 0 else int(first["record"]),
                            first["error"] + more)

    with atomic.staged_file(out, "w") as merged:
        merged.write(HEADER + "\n")
        for path in files:
            merged.write((parts / _part_name(path)).read_text())
    summary = InferSummary(str(out), len(files), len(files) - len(pending), len(pending), videos,
                           round(time.monotonic() - started, 2), pool, skipped_records)
    if skipped_records:
        log.warning("skip_corrupt: %d corrupt records left out", skipped_records)
    if track:
        from raytrain8m.records import tracking
        tracking.log_run(f"infer {model_dir.name}", {"model": str(model_dir), "data": str(data), "out": str(out),
                                                     "source": source, "use_gpu": use_gpu,
                                                     "skip_corrupt": skip_corrupt},
                         {"files": summary.files, "files_done_before": summary.skipped, "videos": videos,
                          "seconds": summary.seconds, "actors": pool, "skipped_records": skipped_records},
                         tags={"stage": "infer"})
    return summary
