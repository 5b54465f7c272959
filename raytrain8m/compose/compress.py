"""Compression: float16 (paper 2.2, the four big tensors cast to float32 at use) or int8 (beyond
the paper: big weights as uint8 codes dequantized in the graph, models/storage.py).

The model code supports both (`ModelConfig.fp16`, `ModelConfig.int8`); this module turns an
fp32 checkpoint into a compressed one and reports what it saved and what it cost in GAP.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np

from raytrain8m.models import ModelConfig, built_size, storage, storage_dtype
from raytrain8m.records.checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


def to_fp16(config: ModelConfig, tensors: Mapping[str, np.ndarray]) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """The fp16 config and tensors: BIG_TENSORS cast to float16, everything else unchanged."""
    config16 = config.replace(fp16=True)
    return config16, {name: np.asarray(value).astype(storage_dtype(config16, name))
                      for name, value in tensors.items()}


def to_int8(config: ModelConfig, tensors: Mapping[str, np.ndarray],
            scheme: str = "affine") -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """The int8 config and stored tensors (models/storage.py): big weights as uint8 codes."""
    return storage.to_precision(config.replace(fp16=False), tensors, "int8", scheme)


def to_precision(config: ModelConfig, tensors: Mapping[str, np.ndarray], precision: str,
                 scheme: str = "affine") -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """float32 weights at `precision` (fp32, fp16 or int8)."""
    if precision == "fp16":
        return to_fp16(config.replace(int8=""), tensors)
    return storage.to_precision(config, tensors, precision, scheme)


@dataclasses.dataclass
class CompressReport:
    source: str
    out: str
    model: str
    fp32_mib: float
    compressed_mib: float
    precision: str = "fp16"
    gap_fp32: float | None = None
    gap_compressed: float | None = None

    @property
    def gap_change(self) -> float | None:
        if self.gap_fp32 is None or self.gap_compressed is None:
            return None
        return self.gap_compressed - self.gap_fp32

    @property
    def compression_rate(self) -> float:
        return 1 - self.compressed_mib / self.fp32_mib

    def to_dict(self) -> dict[str, Any]:
        """Also under `<precision>_mib` and `gap_<precision>` (the demo report reads fp16_mib, gap_fp16)."""
        return {**dataclasses.asdict(self), f"{self.precision}_mib": self.compressed_mib,
                f"gap_{self.precision}": self.gap_compressed, "gap_change": self.gap_change,
                "compression_rate": self.compression_rate}


def compress_checkpoint(src: str | os.PathLike, dst: str | os.PathLike,
                        validate_data: str | Sequence[str] | None = None, batch_size: int = 256,
                        max_batches: int | None = None, progress: bool = True, precision: str = "fp16",
                        scheme: str = "affine") -> CompressReport:
    """Write checkpoint `src` at `precision` (fp16 or int8) to `dst`; evaluate both on
    `validate_data` if given."""
    checkpoint = load_checkpoint(src, weights_only=True)
    config32 = checkpoint.config.replace(fp16=False, int8="")
    compressed_config, tensors = to_precision(config32, storage.to_float32(checkpoint.weights), precision,
                                              scheme)
    save_checkpoint(dst, compressed_config, tensors, step=checkpoint.step,
                    state={**{k: v for k, v in checkpoint.state.items() if k != "step"},
                           "compressed_from": str(src), "precision": precision})
    report = CompressReport(str(src), str(dst), config32.name, built_size(config32)[0],
                            built_size(compressed_config)[0], precision)
    if validate_data is not None:
        from raytrain8m.records.evaluate import evaluate, load_predictor

        gaps = []
        for path, label in ((src, "fp32"), (dst, precision)):
            predict, loaded = load_predictor(path)
            metrics = evaluate(predict, validate_data, loaded.config.num_classes, batch_size=batch_size,
                               max_batches=max_batches, progress=progress, desc=f"evaluate {label}")
            gaps.append(float(metrics["gap"]))
        report.gap_fp32, report.gap_compressed = gaps
    log.info("compressed %s to %s: %.2f -> %.2f MiB (%.1f%%), GAP change %s", config32.name, precision,
             report.fp32_mib, report.compressed_mib, 100 * report.compression_rate, report.gap_change)
    return report


def load_predictor_at(path: str | os.PathLike, precision: str, scheme: str = "affine"):
    """A predictor of checkpoint `path` with its weights stored at `precision` (what an export runs)."""
    from raytrain8m.records.evaluate import model_from_tensors, predictor

    checkpoint = load_checkpoint(path, weights_only=True)
    config = checkpoint.config.replace(fp16=False, int8="")
    config, tensors = to_precision(config, storage.to_float32(checkpoint.weights), precision, scheme)
    return predictor(model_from_tensors(config, tensors))
