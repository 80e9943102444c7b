"""Typed views of params.yaml that reject typos before any work starts.

Every section becomes a frozen dataclass; an unknown key, a missing key, a value
of the wrong type or out of range raises ``ParamsError`` naming the key path
(``variants.lr_scheduler.lr``) and what would be accepted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

SCHEDULES = ("constant", "one_cycle")


class ParamsError(ValueError):
    """A params.yaml value that no run should start with."""


def _build(cls, data: Any, path: str):
    """Instantiate dataclass ``cls`` from a mapping, checking keys and types."""
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ParamsError(
            f"{path}.{unknown[0]}: unknown key; allowed keys are {', '.join(known)}"
        )
    values = {}
    for name, f in known.items():
        key = f"{path}.{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ParamsError(f"{key}: missing; add it to params.yaml")
            continue
        values[name] = _check_type(data[name], f.type, key)
    return cls(**values)


def _check_type(value: Any, type_name: str, key: str):
    # Annotations are strings under `from __future__ import annotations`.
    expected = {"int": int, "float": (int, float), "bool": bool, "str": str}.get(type_name)
    if expected is None:  # a nested dataclass or a list, built by the caller
        return value
    if isinstance(value, bool) and type_name != "bool":
        raise ParamsError(f"{key}: expected {type_name}, got a boolean {value!r}")
    if not isinstance(value, expected):
        raise ParamsError(f"{key}: expected {type_name}, got {value!r}")
    return float(value) if type_name == "float" else value


@dataclass(frozen=True)
class DownloadConfig:
    mirror: str = ""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    seed: int
    mean: float
    std: float
    eval_batch_size: int = 1000
    train_limit: int = 0
    test_limit: int = 0
    sync_batchnorm: bool = True
    channels_last: bool = True
    cpu_threads: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ParamsError(f"train.{name}: must be a positive integer, got {getattr(self, name)}")
        for name in ("train_limit", "test_limit", "cpu_threads"):
            if getattr(self, name) < 0:
                raise ParamsError(f"train.{name}: must be 0 (the default) or a positive count, got {getattr(self, name)}")
        if self.std <= 0:
            raise ParamsError(f"train.std: must be positive, got {self.std}")


@dataclass(frozen=True)
class Published:
    params: int
    best_train: float
    best_test: float


@dataclass(frozen=True)
class VariantConfig:
    name: str
    model: str
    lr: float
    momentum: float
    schedule: str
    dropout: float
    augment: bool
    target: str
    published: Published


@dataclass(frozen=True)
class ConsistencyConfig:
    variant: str
    extra_seeds: tuple


@dataclass(frozen=True)
class BenchmarkConfig:
    variant: str
    steps: int
    repeats: int


@dataclass(frozen=True)
class Params:
    download: DownloadConfig
    train: TrainConfig
    variants: dict  # name -> VariantConfig, in params.yaml order
    consistency: ConsistencyConfig
    benchmark: BenchmarkConfig

    def variant(self, name: str) -> VariantConfig:
        if name not in self.variants:
            raise ParamsError(
                f"variants.{name}: unknown variant; choose one of {', '.join(self.variants)}"
            )
        return self.variants[name]


def _build_variant(name: str, data: Any) -> VariantConfig:
    from .models import MODELS  # late import: models imports torch, config should not need to

    path = f"variants.{name}"
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping, got {type(data).__name__}")
    published = _build(Published, data.get("published"), f"{path}.published")
    variant = _build(VariantConfig, {**data, "name": name, "published": published}, path)
    if variant.model not in MODELS:
        raise ParamsError(f"{path}.model: unknown model {variant.model!r}; choose one of {', '.join(MODELS)}")
    if variant.schedule not in SCHEDULES:
        raise ParamsError(f"{path}.schedule: unknown schedule {variant.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if variant.lr <= 0:
        raise ParamsError(f"{path}.lr: must be positive, got {variant.lr}")
    if not 0 <= variant.momentum < 1:
        raise ParamsError(f"{path}.momentum: must be in [0, 1), got {variant.momentum}")
    if not 0 <= variant.dropout < 1:
        raise ParamsError(f"{path}.dropout: must be in [0, 1), got {variant.dropout}")
    return variant


def parse_params(raw: Any) -> Params:
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml: expected a mapping at the top level")
    sections = {"download", "train", "variants", "consistency", "benchmark"}
    unknown = sorted(set(raw) - sections)
    if unknown:
        raise ParamsError(f"{unknown[0]}: unknown section; allowed are {', '.join(sorted(sections))}")
    missing = sorted(sections - set(raw))
    if missing:
        raise ParamsError(f"{missing[0]}: missing section; add it to params.yaml")
    if not isinstance(raw["variants"], dict) or not raw["variants"]:
        raise ParamsError("variants: expected a mapping of at least one variant")
    variants = {name: _build_variant(name, data) for name, data in raw["variants"].items()}
    consistency_raw = raw["consistency"]
    if not isinstance(consistency_raw, dict):
        raise ParamsError("consistency: expected a mapping")
    seeds = consistency_raw.get("extra_seeds")
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ParamsError(f"consistency.extra_seeds: expected a list of integers, got {seeds!r}")
    params = Params(
        download=_build(DownloadConfig, raw["download"], "download"),
        train=_build(TrainConfig, raw["train"], "train"),
        variants=variants,
        consistency=_build(ConsistencyConfig, {**consistency_raw, "extra_seeds": tuple(seeds)}, "consistency"),
        benchmark=_build(BenchmarkConfig, raw["benchmark"], "benchmark"),
    )
    if params.train.seed in params.consistency.extra_seeds or len(set(seeds)) != len(seeds):
        raise ParamsError(
            "consistency.extra_seeds: must be distinct and exclude train.seed "
            f"({params.train.seed}), which the main run already trains"
        )
    params.variant(params.consistency.variant)
    params.variant(params.benchmark.variant)
    for name in ("steps", "repeats"):
        if getattr(params.benchmark, name) <= 0:
            raise ParamsError(f"benchmark.{name}: must be a positive integer")
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found; run from the project root or pass --params")
    with path.open() as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ParamsError(f"{path}: not valid YAML ({e})") from None
    return parse_params(raw)
