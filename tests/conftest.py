"""Shared fixtures: real MNIST from the local mirror, quick params files, subprocess env.

The mirror is ``$MNIST_MIRROR`` if set (a directory or URL holding the four
official .gz files), else ``../shared/mnist`` next to the repository (the CI
layout). Everything a test writes goes under pytest's tmp dirs.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
GZ_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "network: reaches PyPI (pip download); runs by default, skip with -m 'not network'")
    # One thread per process unless the caller says otherwise: the test models are tiny,
    # and on a shared CPU box oversubscribed intra-op threads make them ~10x slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def mirror_location() -> str:
    return os.environ.get("MNIST_MIRROR") or str(Path(__file__).resolve().parents[2] / "shared" / "mnist")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def mnist_mirror() -> str:
    """The mirror as download_mnist accepts it: a directory or a URL."""
    location = mirror_location()
    if "://" not in location and not all((Path(location) / f"{n}.gz").is_file() for n in GZ_NAMES):
        pytest.fail(f"MNIST mirror {location} lacks the four .gz files; set MNIST_MIRROR")
    return location


@pytest.fixture(scope="session")
def mnist_mirror_dir(mnist_mirror, tmp_path_factory) -> Path:
    """The mirror as a local directory (a URL mirror is fetched once into a tmp dir)."""
    if "://" not in mnist_mirror:
        return Path(mnist_mirror)
    local = tmp_path_factory.mktemp("mirror")
    for name in GZ_NAMES:
        with urllib.request.urlopen(f"{mnist_mirror.rstrip('/')}/{name}.gz", timeout=60) as r:
            (local / f"{name}.gz").write_bytes(r.read())
    return local


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory, mnist_mirror) -> Path:
    """A tmp data root with <root>/MNIST/raw filled by download_mnist from the mirror."""
    from mnist_repro.data import download_mnist

    root = tmp_path_factory.mktemp("mnist_root")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MNIST_MIRROR", mnist_mirror)
        download_mnist(root, log=lambda msg: None)
    return root


def write_quick_params(dest: Path, *, epochs: int = 1, train_limit: int = 256, test_limit: int = 200,
                       overrides: dict | None = None) -> Path:
    """The repo's params.yaml with a quick train section; `overrides` maps dotted keys to values."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"].update(epochs=epochs, train_limit=train_limit, test_limit=test_limit)
    for dotted, value in (overrides or {}).items():
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[last] = value
    dest = Path(dest)
    path = dest / "params.yaml" if dest.is_dir() else dest
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def quick_params():
    """Factory: quick_params(dir_or_file, epochs=1, train_limit=256, test_limit=200,
    overrides={"variants.lr_scheduler.lr": 0.02}) -> path of the written params.yaml."""
    return write_quick_params


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory, mnist_mirror) -> dict:
    """Environment for stage subprocesses: no user Accelerate config, no inherited
    ACCELERATE_* launch settings, the test mirror, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(HF_HOME=str(tmp_path_factory.mktemp("hf_home")), MNIST_MIRROR=mnist_mirror,
               PYTHONUNBUFFERED="1", DVC_NO_ANALYTICS="1")
    return env
