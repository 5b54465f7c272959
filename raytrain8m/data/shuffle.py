"""A training worker's local shuffle: rows of incoming blocks regrouped into batches drawn at random
from a buffer of rows (as tf.data's `shuffle(buffer_size)`), in numpy, no TensorFlow or Ray.

Each row is copied once into a preallocated buffer slot and once out into its batch. Ray Data's
own `local_shuffle_buffer_size` instead concatenates its whole buffer into a new table at every
refill and takes rows from that: measured as three quarters of a training worker's input work
at 300 frames a video, CPU that the step then lacks (bench/train_step.py).
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

Columns = dict[str, np.ndarray]


def shuffled_batches(blocks: Iterable[Columns], batch_size: int, buffer_size: int,
                     seed: int | list[int] | None = None, drop_last: bool = True) -> Iterator[Columns]:
    """Batches of `batch_size` rows from `blocks` (dicts of equal-length column arrays, as Ray
    Data's `iter_batches(batch_format="numpy")` gives): each row once, the rows of a batch drawn
    at random from the `buffer_size` rows read so far and not yet taken, the same batches for the
    same blocks and `seed`. `buffer_size` 0 keeps the rows in order. The last rows, fewer than a
    batch, are dropped unless not `drop_last`."""
    if batch_size < 1 or buffer_size < 0:
        raise ValueError(f"need batch_size >= 1 and buffer_size >= 0, got {batch_size}, {buffer_size}")
    rng = np.random.default_rng(seed) if buffer_size else None
    capacity = max(buffer_size, batch_size)
    storage: Columns | None = None
    free = list(range(capacity - 1, -1, -1))  # slots to fill, popped from the end: 0, 1, …
    live: list[int] = []                      # filled slots in arrival order

    def take(count: int) -> Columns:
        if rng is None:
            chosen = live[:count]
            del live[:count]
        else:
            picks = rng.choice(len(live), count, replace=False)
            chosen = [live[i] for i in picks]
            for i in sorted(picks, reverse=True):
                del live[i]
        free.extend(chosen)
        index = np.asarray(chosen)
        return {name: column[index] for name, column in storage.items()}

    for block in blocks:
        rows = len(next(iter(block.values()))) if block else 0
        if storage is None and rows:
            storage = {name: np.empty((capacity, *np.shape(column)[1:]), np.asarray(column).dtype)
                       for name, column in block.items()}
        start = 0
        while start < rows:
            count = min(len(free), rows - start)
            slots = [free.pop() for _ in range(count)]
            for name, column in storage.items():
                column[slots] = block[name][start:start + count]
            live.extend(slots)
            start += count
            while len(live) == capacity:  # full: a batch leaves, making room
                yield take(batch_size)
    while len(live) >= batch_size:
        yield take(batch_size)
    if live and not drop_last:
        yield take(len(live))
