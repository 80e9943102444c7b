"""The under_3k search (docs/under_3k.md) never touches the test set: its training path opens
only the training split, and every experiment its script queues scores on a holdout."""

from __future__ import annotations

import dataclasses
import os
import subprocess

import pytest
import torchvision
from support.projects import REPO

from mnist_repro.core.config import load_params
from mnist_repro.core.models import build_model, count_parameters
from mnist_repro.training.launch import make_accelerator
from mnist_repro.training.train import run_training

SCRIPT = REPO / "research" / "under_3k.sh"


def queued(tmp_path, *args) -> list[dict]:
    """The `dvc` calls research/under_3k.sh makes, each as {"args": [...], "sets": {key: value}}."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir(exist_ok=True)
    log.write_text("")
    (bin_dir / "dvc").write_text(f"#!/usr/bin/env bash\nprintf '%s\\x1f' \"$@\" >> '{log}'\necho >> '{log}'\n")
    (bin_dir / "dvc").chmod(0o755)
    subprocess.run(["bash", SCRIPT, *args], check=True,
                   env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    calls = []
    for line in log.read_text().splitlines():
        argv = line.split("\x1f")[:-1]
        sets = dict(argv[i + 1].removeprefix("++").split("=", 1) for i, a in enumerate(argv) if a == "-S")
        calls.append({"args": argv, "sets": sets, "name": argv[argv.index("-n") + 1]})
    return calls


def test_every_queued_experiment_scores_on_the_holdout_and_fits_the_budget(tmp_path):
    rounds = {1: queued(tmp_path, "1"),
              2: queued(tmp_path, "2", "s8-16-24-24-24", "c6-6-8-10-12"),
              3: queued(tmp_path, "3", "s8-16-24-24-24:0.02", "s8-16-24-24-24:0.04", "c6-6-8-10-12:0.01")}
    assert [len(calls) for calls in rounds.values()] == [8, 4, 6]  # the protocol's 18 experiments
    for calls in rounds.values():
        for call in calls:
            assert call["args"][:4] == ["exp", "run", "--queue", "train@under_5k"]
            assert call["name"].startswith("u3k")
            assert call["sets"]["train.holdout"] == "10000"
            assert count_parameters(build_model(call["sets"]["variants.under_5k.model"])) < 3000
    assert sorted(c["sets"]["train.seed"] for c in rounds[3]) == ["2", "2", "2", "3", "3", "3"]
    assert len({c["name"] for calls in rounds.values() for c in calls}) == 18


def test_a_round_without_its_candidates_is_refused(tmp_path):
    proc = subprocess.run(["bash", SCRIPT, "2", "s8-16-24-24-24"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == "round 2 takes round 1's best two models (docs/under_3k.md)"


def test_the_search_training_path_opens_only_the_training_split(quick_params, tmp_path, mnist_root, monkeypatch):
    """A round-1 experiment's settings, shortened: torchvision's MNIST spied, every dataset the run
    opens is the training split, and what it scores on is the held-out tail of it."""
    opened = []
    real = torchvision.datasets.MNIST

    def spied_init(self, root, train=True, **kwargs):
        opened.append(train)
        real.__init__(self, root, train=train, **kwargs)

    # named MNIST: torchvision finds the files under <root>/<class name>/raw
    monkeypatch.setattr(torchvision.datasets, "MNIST", type("MNIST", (real,), {"__init__": spied_init}))
    params = load_params(quick_params(tmp_path, epochs=1, train_limit=600, test_limit=200,
                                      overrides={"train.cpu_threads": 1}))
    variant = dataclasses.replace(params.variant("under_5k"), model="s8-16-24-24-24")
    cfg = dataclasses.replace(params.train, holdout=100, batch_size=128)
    result = run_training(variant, cfg, mnist_root, accelerator=make_accelerator())
    assert opened and all(opened), opened
    assert result.metrics["evaluated_on"] == "holdout (last 100 training images)"
    assert result.metrics["params"] < 3000
