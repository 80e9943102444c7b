"""Typed views of params.yaml that reject typos before any work starts.

Every section becomes a frozen dataclass; an unknown key, a missing key, a value
of the wrong type or out of range raises ``ParamsError`` naming the key path
(``variants.lr_scheduler.lr``) and what would be accepted. Each dataclass checks
its own fields' ranges as it is made (``__post_init__``, so a ``dataclasses.replace``
copy is checked too); ``parse_params`` checks what spans sections (a named variant
exists, extra seeds exclude train.seed) and whether a variant's model builds.

The optional ``registration`` section holds registered variants: designs fixed in one commit
with their own seeds and a criterion, trained on those seeds only (stage
registered@<variant>-<seed>, no train@ run). ``Params.variants`` lists them after the
``variants:`` entries, so every reader of the table's variants sees them;
``Params.seeds_of`` and ``Params.stage_of`` give their seeds and stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ParamsError
from .typed_yaml import Yaml12Loader, build, int_list, section, variant_list

SCHEDULES = ("constant", "one_cycle")
OPTIMIZERS = ("sgd", "nesterov", "adam")  # SGD as published, its Nesterov form, Adam with beta1 = momentum


@dataclass(frozen=True)
class DownloadConfig:
    mirror: str = ""


PRECISIONS = ("no", "bf16", "fp16")


def _check_mixed_precision(key: str, value: str) -> None:
    """A precision run or benchmark compares a mixed precision with fp32, so "no" is not one."""
    if value not in PRECISIONS[1:]:
        raise ParamsError(f"{key}: {value!r} is not a mixed precision to compare with fp32; "
                          f"choose one of {', '.join(PRECISIONS[1:])}")


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
    compile: bool = False            # torch.compile (inductor) the forward half of each training step
    keep_freed_memory: bool = True   # glibc malloc keeps freed blocks for the next step (speed.py)
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
    SECTION = "variants"  # where params.yaml holds it, for messages (not a field)
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

    def __post_init__(self):
        path = f"{self.SECTION}.{self.name}"
        if self.schedule not in SCHEDULES:
            raise ParamsError(f"{path}.schedule: unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ParamsError(f"{path}.optimizer: unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.optimizer == "nesterov" and self.momentum == 0:
            raise ParamsError(f"{path}.momentum: Nesterov SGD needs momentum > 0; raise it or use optimizer sgd")
        if self.lr <= 0:
            raise ParamsError(f"{path}.lr: must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ParamsError(f"{path}.momentum: must be in [0, 1), got {self.momentum}")
        if not 0 <= self.dropout < 1:
            raise ParamsError(f"{path}.dropout: must be in [0, 1), got {self.dropout}")
        if not 0 <= self.weight_decay < 0.1:
            raise ParamsError(f"{path}.weight_decay: must be in [0, 0.1) (0 = none, as published; "
                              f"5e-4 is a common value), got {self.weight_decay}")


@dataclass(frozen=True)
class RegisteredVariant(VariantConfig):
    """A registered variant (registration.variants.<name>): the same recipe fields, its own section."""
    SECTION = "registration.variants"


@dataclass(frozen=True)
class SeedGroup:
    """Variants that train the same extra seeds beside train.seed."""
    variants: tuple
    extra: tuple


@dataclass(frozen=True)
class SeedsConfig(SeedGroup):
    """seeds: the main group (variants, extra; stage seed@) and the slow group (stage seed_slow@)."""
    slow: SeedGroup = SeedGroup((), ())

    def __post_init__(self):
        both = sorted(set(self.variants) & set(self.slow.variants))
        if both:
            raise ParamsError(f"seeds.slow.variants: {both[0]!r} is also in seeds.variants; keep it in one")


@dataclass(frozen=True)
class EquivalenceRuns:
    """Some variants' seeds rerun another way and tested for equivalence with their main runs."""
    SECTION = ""  # the params.yaml section, for messages
    variants: tuple
    seeds: tuple
    margin: float  # equivalence margin, percentage points of test accuracy

    def __post_init__(self):
        if not 0 < self.margin < 100:
            raise ParamsError(f"{self.SECTION}.margin: must be a positive number of percentage points, "
                              f"got {self.margin}")


@dataclass(frozen=True)
class PublishedPathConfig(EquivalenceRuns):
    """The notebooks' data path over seeds (stage published_path@<variant>-<seed>)."""
    SECTION = "published_path"


@dataclass(frozen=True)
class ConfirmationConfig:
    variant: str
    seeds: tuple
    min_final_test_mean: float  # %, mean final-epoch test accuracy over the seeds

    def __post_init__(self):
        if not 0 < self.min_final_test_mean <= 100:
            raise ParamsError(f"confirmation.min_final_test_mean: must be a test accuracy in (0, 100] %, "
                              f"got {self.min_final_test_mean}")


@dataclass(frozen=True)
class PrecisionConfig:
    variant: str
    mixed_precision: str
    seeds: tuple

    def __post_init__(self):
        _check_mixed_precision("precision.mixed_precision", self.mixed_precision)


@dataclass(frozen=True)
class CompileCheckConfig(EquivalenceRuns):
    """Runs of some variants' seeds with train.compile's other value, compared with the same
    seeds' main runs (stage compile_check@<variant>-<seed>)."""
    SECTION = "compile_check"


@dataclass(frozen=True)
class DataPathTestConfig(EquivalenceRuns):
    """The confirmatory data-path test: new seeds of some variants on both data paths, ours
    (stage data_path_ours@<variant>-<seed>) and the notebooks' (data_path_published@...)."""
    SECTION = "data_path_test"


@dataclass(frozen=True)
class RegistrationConfig:
    """Registered variants (params.yaml `registration`, optional): each trains `seeds` alone (stage
    registered@<variant>-<seed>) and is judged by the criterion; empty when the section is absent."""
    variants: dict              # name -> RegisteredVariant (defaults merged in), in params.yaml order
    seeds: tuple                # seeds no other run of params.yaml trains
    min_final_test_mean: float  # %, mean final-epoch test accuracy over the seeds
    min_seeds_at: int           # seeds whose final-epoch test accuracy is at least min_final_test_mean

    @classmethod
    def none(cls) -> RegistrationConfig:
        """params.yaml without a `registration` section: no registered variant."""
        return cls({}, (), 100.0, 0)

    def __post_init__(self):
        if not self.variants:  # no section: nothing registered, nothing to check
            return
        if len(self.seeds) < 2:
            raise ParamsError(f"registration.seeds: {len(self.seeds)} seed{'s' if len(self.seeds) != 1 else ''}; "
                              "list at least 2 (a mean over seeds and its spread)")
        if not 0 < self.min_final_test_mean <= 100:
            raise ParamsError(f"registration.min_final_test_mean: must be a test accuracy in (0, 100] %, "
                              f"got {self.min_final_test_mean}")
        if not 0 <= self.min_seeds_at <= len(self.seeds):
            raise ParamsError(f"registration.min_seeds_at: must be a count of seeds from 0 to the "
                              f"{len(self.seeds)} registration.seeds lists, got {self.min_seeds_at}")

    def met(self, finals: list[float]) -> bool:
        """Do these final-epoch test accuracies, one per seed, meet the criterion?"""
        return (sum(finals) / len(finals) >= self.min_final_test_mean
                and sum(f >= self.min_final_test_mean for f in finals) >= self.min_seeds_at)


@dataclass(frozen=True)
class BenchmarkConfig:
    variant: str
    steps: int
    repeats: int
    mixed_precision: str = "bf16"

    def __post_init__(self):
        _check_mixed_precision("benchmark.mixed_precision", self.mixed_precision)
        if self.steps < 0 or self.repeats <= 0:
            raise ParamsError("benchmark.steps: must be 0 (one whole epoch) or a positive count, "
                              "and benchmark.repeats a positive count")


@dataclass(frozen=True)
class Params:
    download: DownloadConfig
    launch: LaunchConfig
    train: TrainConfig
    variants: dict  # name -> VariantConfig (defaults merged in): `variants`, then `registration.variants`
    seeds: SeedsConfig
    published_path: PublishedPathConfig
    confirmation: ConfirmationConfig
    precision: PrecisionConfig
    benchmark: BenchmarkConfig
    compile_check: CompileCheckConfig
    data_path_test: DataPathTestConfig
    registration: RegistrationConfig = field(default_factory=RegistrationConfig.none)

    def registered(self, name: str) -> bool:
        """Is `name` a registered variant (registration.variants), which trains registration.seeds only?"""
        return name in self.registration.variants

    def variant(self, name: str) -> VariantConfig:
        if name not in self.variants:
            raise ParamsError(
                f"variants.{name}: unknown variant; choose one of {', '.join(self.variants)}"
            )
        return self.variants[name]

    def seeds_of(self, name: str) -> tuple[int, ...]:
        """Every seed variant `name` trains, its main run's first: train.seed and its group's extra
        seeds (params.yaml's train.seed and seeds), or a registered variant's registration.seeds."""
        self.variant(name)
        if self.registered(name):
            return self.registration.seeds
        for group in (self.seeds, self.seeds.slow):
            if name in group.variants:
                return (self.train.seed, *group.extra)
        return (self.train.seed,)

    def stage_of(self, name: str, seed: int) -> str:
        """The DVC stage (dvc.yaml) that trains variant `name` with `seed`."""
        if seed not in self.seeds_of(name):
            raise ParamsError(f"seeds: variant {name} does not train seed {seed}; its seeds are "
                              f"{', '.join(map(str, self.seeds_of(name)))}")
        if self.registered(name):
            return f"registered@{name}-{seed}"
        if seed == self.train.seed:
            return f"train@{name}"
        return f"{'seed_slow' if name in self.seeds.slow.variants else 'seed'}@{name}-{seed}"


# The recipe keys a `defaults:` section may set; every other VariantConfig field is the variant's own.
OWN_KEYS = ("name", "model", "target")
RECIPE_KEYS = tuple(f.name for f in fields(VariantConfig) if f.name not in OWN_KEYS)


def _build_variant(name: str, data: Any, defaults: dict, cls: type = VariantConfig) -> VariantConfig:
    from .models import unbuildable  # late import: models imports torch, config should not need to

    path = f"{cls.SECTION}.{name}"
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping, got {type(data).__name__}")
    if "name" in data:
        raise ParamsError(f"{path}.name: unknown key; the variant's name is its key under {cls.SECTION}")
    missing = [k for k in RECIPE_KEYS if k not in data and k not in defaults]
    if missing:
        raise ParamsError(f"{path}.{missing[0]}: missing; set it under defaults (every variant) or here")
    variant = build(cls, {**defaults, **data, "name": name}, path)  # its own ranges: __post_init__
    problem = unbuildable(variant.model)
    if problem:
        raise ParamsError(f"{path}.model: {problem}")
    return variant


def _defaults(raw: Any) -> dict:
    """The defaults section: recipe keys only (a variant's model and target are its own)."""
    if not isinstance(raw, dict):
        raise ParamsError(f"defaults: expected a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(RECIPE_KEYS))
    if unknown:
        raise ParamsError(f"defaults.{unknown[0]}: unknown key; allowed keys are {', '.join(RECIPE_KEYS)}"
                          + (" (model and target belong to each variant)" if unknown[0] in OWN_KEYS else ""))
    return raw


def _seed_group(raw: Any, path: str, variants: dict, train_seed: int) -> dict:
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping with variants and extra, got {type(raw).__name__}")
    group = {**raw, "variants": variant_list(raw.get("variants"), f"{path}.variants", variants),
             "extra": int_list(raw.get("extra"), f"{path}.extra")}
    if train_seed in group["extra"]:
        raise ParamsError(f"{path}.extra: must exclude train.seed ({train_seed}), which every variant's main run trains")
    return group


def _seeds(raw: dict, variants: dict, train_seed: int) -> SeedsConfig:
    """Each variant in at most one seed group; one in neither trains train.seed only (quick pipelines)."""
    main = _seed_group(raw, "seeds", variants, train_seed)
    main.pop("slow", None)
    slow = build(SeedGroup, _seed_group(raw.get("slow", {"variants": [], "extra": []}), "seeds.slow", variants,
                                         train_seed), "seeds.slow")
    return build(SeedsConfig, {**main, "slow": slow}, "seeds")  # one group per variant: __post_init__


def _equivalence_runs(cls: type, raw: dict, variants: dict) -> EquivalenceRuns:
    """A section of variants and seeds rerun another way (published_path, compile_check, data_path_test)."""
    name = cls.SECTION
    data = section(raw, name)
    return build(cls, {**data, "variants": variant_list(data.get("variants"), f"{name}.variants", variants),
                       "seeds": int_list(data.get("seeds"), f"{name}.seeds")}, name)


def _registration(raw: dict, defaults: dict, variants: dict) -> RegistrationConfig:
    """The optional registration section: its variants built as `variants` entries are, under their own names."""
    if "registration" not in raw:
        return RegistrationConfig.none()
    data = section(raw, "registration")
    known = [f.name for f in fields(RegistrationConfig)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ParamsError(f"registration.{unknown[0]}: unknown key; allowed keys are {', '.join(known)}")
    missing = [k for k in known if k not in data]
    if missing:
        raise ParamsError(f"registration.{missing[0]}: missing; add it, or remove the section to register no variant")
    if not isinstance(data["variants"], dict) or not data["variants"]:
        raise ParamsError("registration.variants: expected a mapping of at least one variant; remove the section "
                          "to register none")
    both = [name for name in data["variants"] if name in variants]
    if both:
        raise ParamsError(f"registration.variants.{both[0]}: also a variant under variants, which trains "
                          "train.seed; keep it in one")
    registered = {name: _build_variant(name, entry, defaults, RegisteredVariant)
                  for name, entry in data["variants"].items()}
    return build(RegistrationConfig, {**data, "variants": registered,
                                      "seeds": int_list(data["seeds"], "registration.seeds")}, "registration")


# The keys that name variants to train or check another way: a registered variant trains
# registration.seeds alone, and their stages read `variants.<name>`, which it lacks.
NAMING_KEYS = ("seeds.variants", "seeds.slow.variants", "published_path.variants", "compile_check.variants",
               "data_path_test.variants", "confirmation.variant", "precision.variant", "benchmark.variant")


def _refuse_registered(raw: dict, registered: dict) -> None:
    for key in NAMING_KEYS:
        value = raw
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        for name in value if isinstance(value, list) else [value]:
            if isinstance(name, str) and name in registered:
                raise ParamsError(f"{key}: {name!r} is a registered variant (registration.variants), which trains "
                                  "registration.seeds alone; remove it here")


def _shared_seed(seeds: tuple, used: dict) -> tuple[int, str] | None:
    """(the smallest of `seeds` that some key of `used` also trains, the first such key), or None."""
    shared = min(((seed, i, key) for i, (key, trained) in enumerate(used.items()) for seed in trained
                  if seed in seeds), default=None)
    return shared and (shared[0], shared[2])


SECTIONS = ("download", "launch", "train", "defaults", "variants", "seeds", "published_path", "confirmation",
            "precision", "benchmark", "compile_check", "data_path_test", "registration")
OPTIONAL_SECTIONS = ("registration",)


def parse_params(raw: Any) -> Params:
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml: expected a mapping at the top level")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ParamsError(f"{unknown[0]}: unknown section; allowed are {', '.join(SECTIONS)}")
    missing = [s for s in SECTIONS if s not in raw and s not in OPTIONAL_SECTIONS]
    if missing:
        raise ParamsError(f"{missing[0]}: missing section; add it to params.yaml")
    if not isinstance(raw["variants"], dict) or not raw["variants"]:
        raise ParamsError("variants: expected a mapping of at least one variant")
    defaults = _defaults(raw["defaults"])
    variants = {name: _build_variant(name, data, defaults) for name, data in raw["variants"].items()}
    registration = _registration(raw, defaults, variants)
    _refuse_registered(raw, registration.variants)
    train = build(TrainConfig, raw["train"], "train")
    conf_raw, prec_raw = section(raw, "confirmation"), section(raw, "precision")
    precision = build(PrecisionConfig, {**prec_raw, "seeds": int_list(prec_raw.get("seeds"), "precision.seeds")},
                       "precision")
    params = Params(
        download=build(DownloadConfig, raw["download"], "download"),
        launch=build(LaunchConfig, raw["launch"], "launch"),
        train=train,
        variants={**variants, **registration.variants},  # the table's order: registered variants last
        seeds=_seeds(section(raw, "seeds"), variants, train.seed),
        published_path=_equivalence_runs(PublishedPathConfig, raw, variants),
        confirmation=build(ConfirmationConfig, {
            **conf_raw, "seeds": int_list(conf_raw.get("seeds"), "confirmation.seeds")}, "confirmation"),
        precision=precision,
        benchmark=build(BenchmarkConfig, raw["benchmark"], "benchmark"),
        compile_check=_equivalence_runs(CompileCheckConfig, raw, variants),
        data_path_test=_equivalence_runs(DataPathTestConfig, raw, variants),
        registration=registration,
    )
    run_before = _shared_seed(params.data_path_test.seeds,
                              {name: params.seeds_of(name) for name in params.data_path_test.variants})
    if run_before:
        raise ParamsError(f"data_path_test.seeds: seed {run_before[0]} already trains these variants' table runs; "
                          "the test needs seeds never run before")
    used = _shared_seed(registration.seeds, {
        "train.seed": (train.seed,), "seeds.extra": params.seeds.extra, "seeds.slow.extra": params.seeds.slow.extra,
        **{f"{key}.seeds": getattr(params, key).seeds for key in (
            "published_path", "confirmation", "precision", "compile_check", "data_path_test")}})
    if used:
        raise ParamsError(f"registration.seeds: seed {used[0]} is also in {used[1]}; a registered variant needs "
                          "seeds no other run trains")
    for key in ("confirmation", "precision", "benchmark"):
        name = getattr(params, key).variant
        if name not in variants:
            raise ParamsError(f"{key}.variant: {name!r} is not a variant; choose from {', '.join(variants)}")
    return params


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
