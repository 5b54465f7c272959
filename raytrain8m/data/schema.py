"""YouTube-8M 2018 frame-level format: sizes, (de)quantization, and the data error type."""
from __future__ import annotations

import numpy as np

from raytrain8m.runtime.errors import Raytrain8mError

RGB_SIZE = 1024
AUDIO_SIZE = 128
FEATURE_SIZE = RGB_SIZE + AUDIO_SIZE  # the model consumes rgb‖audio, 1152 floats a frame
MAX_FRAMES = 300
NUM_CLASSES = 3862

# The starter's utils.Dequantize(max_quantized_value=2, min_quantized_value=-2):
# scalar = (max - min) / 255, bias = (max - min) / 512 + min  (512, not 510: kept as published).
_QUANT_SCALE = 4.0 / 255.0
_QUANT_BIAS = 4.0 / 512.0 - 2.0
# Dequantizing through a 256-entry table is exact and much faster than the arithmetic.
_DEQUANT_TABLE = (np.arange(256, dtype=np.float32) * np.float32(_QUANT_SCALE)
                  + np.float32(_QUANT_BIAS)).astype(np.float32)


class DataError(Raytrain8mError):
    """A data file, or one record in it, that cannot be used as YouTube-8M input."""

    def __init__(self, path: str | None, record: int | None, why: str):
        self.path = path
        self.record = record
        self.why = why
        where = str(path) if path is not None else "<data>"
        if record is not None:
            where += f", record {record}"
        super().__init__(f"{where}: {why}")

    def __reduce__(self):  # picklable across Ray workers with its fields
        return (type(self), (self.path, self.record, self.why))


def dequantize(q: np.ndarray) -> np.ndarray:
    """uint8 features -> float32 in about [-2, 2], exactly as the official starter code."""
    q = np.asarray(q)
    if q.dtype == np.uint8:
        return _DEQUANT_TABLE[q]
    return (q.astype(np.float32) * np.float32(_QUANT_SCALE) + np.float32(_QUANT_BIAS)).astype(
        np.float32)


def quantize(x: np.ndarray) -> np.ndarray:
    """float features -> uint8, the inverse of `dequantize` (clipped to [-2, 2], rounded)."""
    x = np.clip(np.asarray(x, dtype=np.float32), -2.0, 2.0)
    q = np.rint((x - np.float32(_QUANT_BIAS)) / np.float32(_QUANT_SCALE))
    return np.clip(q, 0, 255).astype(np.uint8)
