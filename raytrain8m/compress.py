"""float16 compression (paper 2.2): the four big tensors stored as float16, cast to float32 at use.

The model code already supports it (`ModelConfig.fp16`); this module turns an fp32
checkpoint into an fp16 one and reports what it saved and what it cost in GAP.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np

from raytrain8m.checkpoint import load_checkpoint, save_checkpoint
from raytrain8m.models import ModelConfig, create_variables, storage_dtype

log = logging.getLogger(__name__)


def to_fp16(config: ModelConfig, tensors: Mapping[str, np.ndarray]) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """The fp16 config and tensors: BIG_TENSORS cast to float16, everything else unchanged."""
    config16 = config.replace(fp16=True)
    return config16, {name: np.asarray(value).astype(storage_dtype(config16, name).as_numpy_dtype)
                      for name, value in tensors.items()}


def built_size_mib(config: ModelConfig) -> float:
    """MiB of the variables really built for `config` (moving statistics included)."""
    variables = create_variables(config, zeros=True)
    size = sum(int(np.prod(v.shape)) * v.dtype.size for v in variables.values()) / 2**20
    del variables
    return size


@dataclasses.dataclass
class CompressReport:
    source: str
    out: str
    model: str
    fp32_mib: float
    fp16_mib: float
    gap_fp32: float | None = None
    gap_fp16: float | None = None

    @property
    def gap_change(self) -> float | None:
        if self.gap_fp32 is None or self.gap_fp16 is None:
            return None
        return self.gap_fp16 - self.gap_fp32

    @property
    def compression_rate(self) -> float:
        return 1 - self.fp16_mib / self.fp32_mib

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "gap_change": self.gap_change,
                "compression_rate": self.compression_rate}


def compress_checkpoint(src: str | os.PathLike, dst: str | os.PathLike,
                        validate_data: str | Sequence[str] | None = None, batch_size: int = 256,
                        max_batches: int | None = None, progress: bool = True) -> CompressReport:
    """Write the fp16 version of checkpoint `src` to `dst`; evaluate both on `validate_data` if given."""
    checkpoint = load_checkpoint(src, weights_only=True)
    config32 = checkpoint.config.replace(fp16=False)
    config16, tensors16 = to_fp16(config32, checkpoint.weights)
    save_checkpoint(dst, config16, tensors16, step=checkpoint.step,
                    state={**{k: v for k, v in checkpoint.state.items() if k != "step"},
                           "compressed_from": str(src)})
    report = CompressReport(str(src), str(dst), config32.name, built_size_mib(config32),
                            built_size_mib(config16))
    if validate_data is not None:
        from raytrain8m.evaluate import evaluate, load_predictor

        gaps = []
        for path in (src, dst):
            predict, loaded = load_predictor(path)
            metrics = evaluate(predict, validate_data, loaded.config.num_classes, batch_size=batch_size,
                               max_batches=max_batches, progress=progress,
                               desc=f"evaluate {'fp16' if loaded.config.fp16 else 'fp32'}")
            gaps.append(float(metrics["gap"]))
        report.gap_fp32, report.gap_fp16 = gaps
    log.info("compressed %s: %.2f -> %.2f MiB (%.1f%%), GAP change %s", config32.name, report.fp32_mib,
             report.fp16_mib, 100 * report.compression_rate, report.gap_change)
    return report

