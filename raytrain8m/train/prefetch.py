"""A worker's training batches, read ahead in a thread. No TensorFlow here: `train.worker` starts
reading before it imports the loop, so Ray Data's start-up (its split coordinator, the read
tasks' processes) overlaps the worker's TensorFlow import instead of following it.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Iterator

import numpy as np

from raytrain8m.data import DataError
from raytrain8m.data.batches import to_step_inputs
from raytrain8m.data.shuffle import shuffled_batches
from raytrain8m.runtime.errors import TrainingError


def batches(shard, config, rank: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Step inputs (`to_step_inputs`) from this worker's shard, epoch after epoch, forever (the
    loop counts steps). Ray Data hands over whole blocks (`prefetch_batches` of them fetched
    ahead while the step runs); their rows pass our own shuffle buffer (`data.shuffle`), seeded
    by (seed, rank, epoch). `config`: a `TrainConfig`."""
    epoch = 0
    while True:
        produced = 0
        blocks = (dict(zip(("frames", "num_frames", "labels"),
                           to_step_inputs(block, config.model.num_classes, config.max_frames)))
                  for block in shard.iter_batches(batch_size=None, batch_format="numpy",
                                                  prefetch_batches=config.prefetch_batches))
        for batch in shuffled_batches(blocks, config.batch_size, config.shuffle_buffer,
                                      seed=[config.seed, rank, epoch]):
            if not batch["labels"].any():
                raise DataError(config.train_data, None, "training batch without labels (a test split?)")
            produced += 1
            yield batch["frames"], batch["num_frames"], batch["labels"]
        if not produced:
            raise TrainingError(f"worker's train shard holds fewer than batch_size={config.batch_size} "
                                f"videos (epoch {epoch}); use a smaller batch or fewer workers")
        epoch += 1


_END = object()  # the source is exhausted


class Prefetcher:
    """`source`'s items, made up to `depth` ahead in a thread that starts at once; the source's
    error is raised where the item would have been. `close()` (or the end of a `with` block)
    stops the thread, consumed or not, and ends the iteration. `take_waited()`: the seconds
    the consumer spent waiting for items since it last asked (0 when reading keeps ahead)."""

    def __init__(self, source: Iterator[tuple], depth: int):
        self._waited = 0.0
        self._ready: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._produce, args=(source,),
                                        name="raytrain8m-prefetch", daemon=True)
        self._thread.start()

    def _put(self, entry: tuple) -> bool:
        while not self._stop.is_set():
            try:
                self._ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, source: Iterator[tuple]) -> None:
        try:
            for item in source:
                if not self._put((item, None)):
                    return
            self._put((_END, None))
        except BaseException as error:  # handed to the consumer, raised there
            self._put((None, error))

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> tuple:
        asked = time.perf_counter()
        try:
            return self._next()
        finally:
            self._waited += time.perf_counter() - asked

    def take_waited(self) -> float:
        waited, self._waited = self._waited, 0.0
        return waited

    def _next(self) -> tuple:
        while not self._done:
            try:
                item, error = self._ready.get(timeout=0.1)
            except queue.Empty:
                self._done = self._stop.is_set()
                continue
            if error is not None or item is _END:
                self._done = True
                if error is not None:
                    raise error
                break
            return item
        raise StopIteration

    def close(self) -> None:
        self._stop.set()
        self._done = True
        self._thread.join(timeout=5)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
