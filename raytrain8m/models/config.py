"""The one config object of a model: it travels with the weights as `model.json`."""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Mapping

from raytrain8m.errors import ConfigError

DEFAULT_BUDGET_MIB = 1024.0  # the paper's ensemble budget (1 GiB; its YHLS is 1019.7 MiB)

MODEL_JSON = "model.json"
_NAME = re.compile(r"^K(\d+)-H(\d+)$")

# The four tensors the paper stores in float16 (about 98% of a model's size).
BIG_TENSORS = (
    "tower/hidden1_weights",
    "tower/gates/weights",
    "tower/experts/weights",
    "tower/gating_prob_weights",
)


def only_known_keys(config_class: type, values: Mapping[str, Any], what: str) -> dict[str, Any]:
    """`values` as keyword arguments of a config dataclass; unknown keys are refused by name."""
    known = {field.name for field in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {what} keys: {', '.join(unknown)}")
    return dict(values)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild, size, average, compress or ensemble a model."""

    cluster_size: int = 16
    hidden_size: int = 256
    num_classes: int = 3862
    num_mixtures: int = 5
    iterations: int = 300
    rgb_size: int = 1024
    audio_size: int = 128
    fp16: bool = False
    model: str = "gated_netvlad"

    def __post_init__(self) -> None:
        for field in ("cluster_size", "hidden_size", "num_classes", "num_mixtures",
                      "iterations", "rgb_size", "audio_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{field} must be a positive integer, got {value!r}")
        if self.cluster_size < 2:
            raise ConfigError(f"cluster_size must be >= 2 (audio uses cluster_size // 2), "
                              f"got {self.cluster_size}")

    @property
    def name(self) -> str:
        return f"K{self.cluster_size}-H{self.hidden_size}"

    @property
    def feature_size(self) -> int:
        return self.rgb_size + self.audio_size

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "ModelConfig":
        """Parse `K32-H1024` (the paper's naming) into a config."""
        match = _NAME.match(name.strip())
        if not match:
            raise ConfigError(f"model name {name!r} is not of the form K<cluster>-H<hidden>, "
                              "e.g. K32-H1024")
        return cls(cluster_size=int(match[1]), hidden_size=int(match[2]), **overrides)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        return cls(**only_known_keys(cls, values, "model config"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "model.json") -> "ModelConfig":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{source}: not valid JSON ({error})") from error
        return cls.from_dict(values)

    def differences(self, other: "ModelConfig") -> list[str]:
        """Keys whose values differ, as `key: mine != theirs` strings."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{key}: {mine[key]!r} != {theirs[key]!r}" for key in mine
                if mine[key] != theirs[key]]
