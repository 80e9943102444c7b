"""Typed views of params.yaml that reject typos before any work starts.

Every section becomes a frozen dataclass; an unknown key, a missing key, a value
of the wrong type or out of range raises ``ParamsError`` naming the key path
(``variants.lr_scheduler.lr``) and what would be accepted.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ParamsError

SCHEDULES = ("constant", "one_cycle")
OPTIMIZERS = ("sgd", "nesterov", "adam")  # SGD as published, its Nesterov form, Adam with beta1 = momentum


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


PRECISIONS = ("no", "bf16", "fp16")


@dataclass(frozen=True)
class LaunchConfig:
    """`accelerate launch` flags; dvc.yaml unpacks the section into the command line."""
    multi_gpu: bool = False
    num_processes: int = 1
    num_machines: int = 1
    main_process_ip: str = "127.0.0.1"
    main_process_port: int = 0
    mixed_precision: str = "no"
    dynamo_backend: str = "no"

    def __post_init__(self):
        for name in ("num_processes", "num_machines"):
            if getattr(self, name) < 1:
                raise ParamsError(f"launch.{name}: must be at least 1, got {getattr(self, name)}")
        if self.num_processes % self.num_machines:
            raise ParamsError(f"launch.num_processes: {self.num_processes} processes do not split evenly over "
                              f"{self.num_machines} machines; use a multiple of launch.num_machines")
        if self.multi_gpu != (self.num_processes > 1):
            # accelerate launch starts a single process without --multi_gpu, whatever --num_processes says.
            raise ParamsError(f"launch.multi_gpu: must be {str(self.num_processes > 1).lower()} when "
                              f"launch.num_processes is {self.num_processes}")
        if self.num_machines > 1 and self.main_process_port == 0:
            # Port 0 makes every node pick its own free port, so the nodes never meet.
            raise ParamsError("launch.main_process_port: 0 (a free port per node) cannot work on several machines; "
                              "set a fixed port such as 29500 that node 0 can open")
        if not 0 <= self.main_process_port <= 65535:
            raise ParamsError(f"launch.main_process_port: must be 0 (pick a free port) or a TCP port, "
                              f"got {self.main_process_port}")
        if self.mixed_precision not in PRECISIONS:
            raise ParamsError(f"launch.mixed_precision: unknown value {self.mixed_precision!r}; choose one of "
                              f"{', '.join(PRECISIONS)})")


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
    holdout: int = 0
    sync_batchnorm: bool = True
    channels_last: bool = True
    cpu_threads: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ParamsError(f"train.{name}: must be a positive integer, got {getattr(self, name)}")
        for name in ("train_limit", "test_limit", "holdout", "cpu_threads"):
            if getattr(self, name) < 0:
                raise ParamsError(f"train.{name}: must be 0 (the default) or a positive count, got {getattr(self, name)}")
        if self.train_limit and self.holdout >= self.train_limit:
            raise ParamsError(f"train.holdout: {self.holdout} held-out images leave none of the "
                              f"train.train_limit={self.train_limit} to train on; lower it")
        if self.std <= 0:
            raise ParamsError(f"train.std: must be positive, got {self.std}")


@dataclass(frozen=True)
class VariantConfig:
    name: str
    model: str
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float  # L2 penalty added to the gradient (SGD or Adam); 0 = as published
    schedule: str
    dropout: float
    augment: bool
    target: str


@dataclass(frozen=True)
class SeedsConfig:
    variants: tuple
    extra: tuple


@dataclass(frozen=True)
class PublishedPathConfig:
    variants: tuple
    seeds: tuple = (1,)   # STUB (pipeline owns the real one): seeds of each published-path rerun
    margin: float = 0.15  # STUB: equivalence margin, percentage points of test accuracy


@dataclass(frozen=True)
class ConfirmationConfig:  # STUB (pipeline owns the real one)
    variant: str
    seeds: tuple
    min_final_test_mean: float


@dataclass(frozen=True)
class PrecisionConfig:
    variant: str
    mixed_precision: str
    seeds: tuple


@dataclass(frozen=True)
class BenchmarkConfig:
    variant: str
    steps: int
    repeats: int
    mixed_precision: str = "bf16"


@dataclass(frozen=True)
class Params:
    download: DownloadConfig
    launch: LaunchConfig
    train: TrainConfig
    variants: dict  # name -> VariantConfig, in params.yaml order
    seeds: SeedsConfig
    published_path: PublishedPathConfig
    precision: PrecisionConfig
    benchmark: BenchmarkConfig
    confirmation: ConfirmationConfig | None = None  # STUB: optional until params.yaml has the section

    def seeds_of(self, name: str) -> tuple:
        """STUB: train.seed first, then seeds.extra for the variants seeds.variants lists."""
        extra = self.seeds.extra if name in self.seeds.variants else ()
        return (self.train.seed, *(s for s in extra if s != self.train.seed))

    def variant(self, name: str) -> VariantConfig:
        if name not in self.variants:
            raise ParamsError(
                f"variants.{name}: unknown variant; choose one of {', '.join(self.variants)}"
            )
        return self.variants[name]


def _build_variant(name: str, data: Any) -> VariantConfig:
    from .models import MODELS  # late import: models imports torch, config should not need to

    path = f"variants.{name}"
    variant = _build(VariantConfig, {**data, "name": name} if isinstance(data, dict) else data, path)
    if variant.model not in MODELS:
        raise ParamsError(f"{path}.model: unknown model {variant.model!r}; choose one of {', '.join(MODELS)}")
    if variant.schedule not in SCHEDULES:
        raise ParamsError(f"{path}.schedule: unknown schedule {variant.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if variant.optimizer not in OPTIMIZERS:
        raise ParamsError(f"{path}.optimizer: unknown optimizer {variant.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if variant.optimizer == "nesterov" and variant.momentum == 0:
        raise ParamsError(f"{path}.momentum: Nesterov SGD needs momentum > 0; raise it or use optimizer sgd")
    if variant.lr <= 0:
        raise ParamsError(f"{path}.lr: must be positive, got {variant.lr}")
    if not 0 <= variant.momentum < 1:
        raise ParamsError(f"{path}.momentum: must be in [0, 1), got {variant.momentum}")
    if not 0 <= variant.dropout < 1:
        raise ParamsError(f"{path}.dropout: must be in [0, 1), got {variant.dropout}")
    if not 0 <= variant.weight_decay < 0.1:
        raise ParamsError(f"{path}.weight_decay: must be in [0, 0.1) (0 = none, as published; "
                          f"5e-4 is a common value), got {variant.weight_decay}")
    return variant


def _int_list(value: Any, key: str) -> tuple:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ParamsError(f"{key}: expected a list of integers, got {value!r}")
    if len(set(value)) != len(value):
        raise ParamsError(f"{key}: {value!r} lists a seed twice")
    return tuple(value)


def _variant_list(value: Any, key: str, variants: dict) -> tuple:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ParamsError(f"{key}: expected a list of variant names, got {value!r}")
    for name in value:
        if name not in variants:
            raise ParamsError(f"{key}: {name!r} is not a variant; choose from {', '.join(variants)}")
    return tuple(value)


def _section(raw: dict, name: str) -> dict:
    if not isinstance(raw[name], dict):
        raise ParamsError(f"{name}: expected a mapping, got {type(raw[name]).__name__}")
    return raw[name]


SECTIONS = ("download", "launch", "train", "variants", "seeds", "published_path", "precision", "benchmark")
OPTIONAL_SECTIONS = ("confirmation",)  # STUB


def parse_params(raw: Any) -> Params:
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml: expected a mapping at the top level")
    unknown = sorted(set(raw) - set(SECTIONS) - set(OPTIONAL_SECTIONS))
    if unknown:
        raise ParamsError(f"{unknown[0]}: unknown section; allowed are {', '.join(SECTIONS)}")
    missing = [s for s in SECTIONS if s not in raw]
    if missing:
        raise ParamsError(f"{missing[0]}: missing section; add it to params.yaml")
    if not isinstance(raw["variants"], dict) or not raw["variants"]:
        raise ParamsError("variants: expected a mapping of at least one variant")
    variants = {name: _build_variant(name, data) for name, data in raw["variants"].items()}
    train = _build(TrainConfig, raw["train"], "train")
    seeds_raw, code_raw, prec_raw = (_section(raw, s) for s in ("seeds", "published_path", "precision"))
    seeds = _build(SeedsConfig, {**seeds_raw,
                                 "variants": _variant_list(seeds_raw.get("variants"), "seeds.variants", variants),
                                 "extra": _int_list(seeds_raw.get("extra"), "seeds.extra")}, "seeds")
    if train.seed in seeds.extra:
        raise ParamsError(f"seeds.extra: must exclude train.seed ({train.seed}), which every variant's main run trains")
    precision = _build(PrecisionConfig, {**prec_raw, "seeds": _int_list(prec_raw.get("seeds"), "precision.seeds")},
                       "precision")
    params = Params(
        download=_build(DownloadConfig, raw["download"], "download"),
        launch=_build(LaunchConfig, raw["launch"], "launch"),
        train=train,
        variants=variants,
        seeds=seeds,
        published_path=_build(PublishedPathConfig, {**code_raw, "variants": _variant_list(
            code_raw.get("variants"), "published_path.variants", variants),
            **({"seeds": _int_list(code_raw["seeds"], "published_path.seeds")} if "seeds" in code_raw else {})},
            "published_path"),
        confirmation=None if "confirmation" not in raw else _build(ConfirmationConfig, {
            **_section(raw, "confirmation"),
            "seeds": _int_list(raw["confirmation"].get("seeds"), "confirmation.seeds")}, "confirmation"),
        precision=precision,
        benchmark=_build(BenchmarkConfig, raw["benchmark"], "benchmark"),
    )
    params.variant(params.precision.variant)
    params.variant(params.benchmark.variant)
    for key, value in (("precision.mixed_precision", precision.mixed_precision),
                       ("benchmark.mixed_precision", params.benchmark.mixed_precision)):
        if value not in PRECISIONS[1:]:
            raise ParamsError(f"{key}: {value!r} is not a mixed precision to compare with fp32; "
                              f"choose one of {', '.join(PRECISIONS[1:])}")
    if params.benchmark.steps < 0 or params.benchmark.repeats <= 0:
        raise ParamsError("benchmark.steps: must be 0 (one whole epoch) or a positive count, "
                          "and benchmark.repeats a positive count")
    return params


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's scalars, the way DVC reads and rewrites params.yaml.

    `dvc exp run -S` rewrites params.yaml under YAML 1.2 and drops the quotes of
    `mixed_precision: "no"`; PyYAML (YAML 1.1) would read that bare `no` as false
    and `1e-3` as a string, so a valid experiment would fail its own checks.
    """


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."))


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found; run from the project root or pass --params")
    with path.open() as f:
        try:
            raw = yaml.load(f, Loader=Yaml12Loader)
        except yaml.YAMLError as e:
            raise ParamsError(f"{path}: not valid YAML ({e})") from None
    return parse_params(raw)
