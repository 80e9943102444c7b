"""Helpers for tests of params.yaml's checks (mnist_repro.core.config)."""

from __future__ import annotations

import copy

import pytest


def rejected(raw: dict, mutate) -> str:
    """The one-line ParamsError parse_params gives for a copy of raw changed by mutate(copy)."""
    from mnist_repro.core.config import parse_params
    from mnist_repro.core.errors import ParamsError

    bad = copy.deepcopy(raw)
    mutate(bad)
    with pytest.raises(ParamsError) as info:
        parse_params(bad)
    return str(info.value)
