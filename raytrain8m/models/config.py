"""The one config object of a model: it travels with the weights as `model.json`."""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Mapping

from raytrain8m.runtime.errors import ConfigError

DEFAULT_BUDGET_MIB = 1024.0  # the paper's ensemble budget (1 GiB; its YHLS is 1019.7 MiB)
MEMBER_PRECISIONS = ("fp16", "int8")  # how an export stores members (fp32 is never worth its size)
SEARCH_AUTO = "auto"  # the ensemble search: each member at the precision that ranks best
SEARCH_PRECISIONS = (*MEMBER_PRECISIONS, SEARCH_AUTO)  # what the search takes


def member_label(letter: str | None, precision: str | None = None, name: str = "") -> str:
    """How tables and reports name a member: its zoo letter, `8` after it when held at int8
    (`A8`), then its model name when given."""
    label = (letter or "") + ("8" if precision == "int8" else "")
    return f"{label} {name}".strip()


MODEL_JSON = "model.json"
# `K32-H1024` is Gated NetVLAD; `NX-K128-H2048[-G8][-E2][-R8][-MoE]` is NeXtVLAD.
_NAME = re.compile(r"^K(\d+)-H(\d+)$")
_NX_NAME = re.compile(r"^NX-K(\d+)-H(\d+)(?:-G(\d+))?(?:-E(\d+))?(?:-R(\d+))?(-MoE)?$")
NEXTVLAD = "nextvlad"
# The registered families (models/registry.py's FAMILIES, which checks it holds these): named here
# so that a config is validated without importing TensorFlow.
FAMILY_NAMES = ("gated_netvlad", NEXTVLAD, "baseline")
CLASSIFIERS = ("logistic", "moe")
# The fields a model name sets; everything else (classes, frames, fp16) comes from elsewhere.
NAME_FIELDS = ("family", "cluster_size", "hidden_size", "groups", "expansion", "gating_reduction",
               "classifier")

INT8_SCHEMES = ("affine", "codebook")  # how 8-bit weights dequantize (models/storage.py)

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
    int8: str = ""  # "" (off), "affine" or "codebook": big weights as uint8 codes (models/storage.py)
    family: str = "gated_netvlad"  # a key of `models.registry.FAMILIES`
    # NeXtVLAD only (Lin et al. 2018; their defaults): groups G (audio G/2), expansion λ,
    # SE gating reduction r, dropout on the VLAD, and the classifier on top.
    groups: int = 8
    expansion: int = 2
    gating_reduction: int = 8
    dropout: float = 0.5
    classifier: str = "logistic"

    def __post_init__(self) -> None:
        for field in ("cluster_size", "hidden_size", "num_classes", "num_mixtures",
                      "iterations", "rgb_size", "audio_size", "groups", "expansion", "gating_reduction"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{field} must be a positive integer, got {value!r}")
        if self.family not in FAMILY_NAMES:
            raise ConfigError(f"unknown model family {self.family!r}; known: {', '.join(FAMILY_NAMES)}")
        if self.int8 and self.int8 not in INT8_SCHEMES:
            raise ConfigError(f"int8 must be one of {', '.join(INT8_SCHEMES)} (or empty), got {self.int8!r}")
        if self.cluster_size < 2:
            raise ConfigError(f"cluster_size must be >= 2 (audio uses cluster_size // 2), "
                              f"got {self.cluster_size}")
        if self.family == NEXTVLAD:
            self._check_nextvlad()

    def _check_nextvlad(self) -> None:
        if self.groups < 2 or self.groups % 2:
            raise ConfigError(f"groups must be even and >= 2 (audio uses groups // 2), got {self.groups}")
        for what, size, groups in (("rgb", self.rgb_size, self.groups), ("audio", self.audio_size, self.groups // 2)):
            if (self.expansion * size) % groups:
                raise ConfigError(f"expansion × {what} size ({self.expansion} × {size}) is not divisible "
                                  f"by its {groups} groups")
        if self.hidden_size % self.gating_reduction:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by gating_reduction "
                              f"{self.gating_reduction}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.classifier not in CLASSIFIERS:
            raise ConfigError(f"classifier must be one of {', '.join(CLASSIFIERS)}, got {self.classifier!r}")

    @property
    def model(self) -> str:
        """The family under its former name (model.json files written before `family`)."""
        return self.family

    @property
    def name(self) -> str:
        if self.family != NEXTVLAD:
            return f"K{self.cluster_size}-H{self.hidden_size}"
        defaults = ModelConfig()
        suffixes = "".join(f"-{letter}{getattr(self, field)}" for letter, field in
                           (("G", "groups"), ("E", "expansion"), ("R", "gating_reduction"))
                           if getattr(self, field) != getattr(defaults, field))
        moe = "-MoE" if self.classifier == "moe" else ""
        return f"NX-K{self.cluster_size}-H{self.hidden_size}{suffixes}{moe}"

    @property
    def feature_size(self) -> int:
        return self.rgb_size + self.audio_size

    @staticmethod
    def name_fields(name: str) -> dict[str, Any]:
        """The fields a model name sets (NAME_FIELDS): the one parser of model names."""
        text = name.strip()
        match = _NAME.match(text)
        if match:
            return {"family": "gated_netvlad", "cluster_size": int(match[1]), "hidden_size": int(match[2])}
        match = _NX_NAME.match(text)
        if not match:
            raise ConfigError(f"model name {name!r} is neither K<cluster>-H<hidden> (Gated NetVLAD, e.g. "
                              "K32-H1024) nor NX-K<cluster>-H<hidden>[-G<groups>][-E<expansion>]"
                              "[-R<reduction>][-MoE] (NeXtVLAD, e.g. NX-K112-H2048-R16)")
        fields = {"family": NEXTVLAD, "cluster_size": int(match[1]), "hidden_size": int(match[2]),
                  "classifier": "moe" if match[6] else "logistic"}
        for field, value in zip(("groups", "expansion", "gating_reduction"), match.groups()[2:5]):
            if value is not None:
                fields[field] = int(value)
        return fields

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "ModelConfig":
        """Parse `K32-H1024` (the paper's naming) or `NX-K128-H2048-R16` (NeXtVLAD) into a config."""
        return cls(**{**cls.name_fields(name), **overrides})

    def replace(self, **changes: Any) -> "ModelConfig":
        if "model" in changes:  # the family's former name
            changes["family"] = changes.pop("model")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        values = dict(values)
        if "model" in values and "family" not in values:  # model.json written before `family`
            values["family"] = values.pop("model")
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
