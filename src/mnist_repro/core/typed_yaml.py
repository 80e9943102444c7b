"""Reading params.yaml: a YAML 1.2 loader that reads it as DVC does, and typed mappings that
reject a bad key or value in one line naming its path (``variants.lr_scheduler.lr``)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import fields
from typing import Any

import yaml

from .errors import ParamsError


def build(cls, data: Any, path: str):
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
        values[name] = check_type(data[name], f.type, key)
    return cls(**values)


def check_type(value: Any, type_name: str, key: str):
    # Annotations are strings under `from __future__ import annotations`.
    expected = {"int": int, "float": (int, float), "bool": bool, "str": str}.get(type_name)
    if expected is None:  # a nested dataclass or a list, built by the caller
        return value
    if isinstance(value, bool) and type_name != "bool":
        raise ParamsError(f"{key}: expected {type_name}, got a boolean {value!r}")
    if not isinstance(value, expected):
        raise ParamsError(f"{key}: expected {type_name}, got {value!r}")
    return float(value) if type_name == "float" else value


def int_list(value: Any, key: str) -> tuple:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ParamsError(f"{key}: expected a list of integers, got {value!r}")
    if len(set(value)) != len(value):
        raise ParamsError(f"{key}: {value!r} lists a seed twice")
    return tuple(value)


def variant_list(value: Any, key: str, variants: dict) -> tuple:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ParamsError(f"{key}: expected a list of variant names, got {value!r}")
    for name in value:
        if name not in variants:
            raise ParamsError(f"{key}: {name!r} is not a variant; choose from {', '.join(variants)}")
    if len(set(value)) != len(value):
        raise ParamsError(f"{key}: {value!r} lists a variant twice")
    return tuple(value)


def section(raw: dict, name: str) -> dict:
    if not isinstance(raw[name], dict):
        raise ParamsError(f"{name}: expected a mapping, got {type(raw[name]).__name__}")
    return raw[name]


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
