"""Under plain `dvc repro` (mnist_repro.parallel.pending): as each training stage starts, one line
with the training runs still pending, their time from the committed runs and the faster ways.

The pending runs are an estimate of `dvc status` made from dvc.yaml, params.yaml and dvc.lock;
here it is checked against real `dvc status --json` on a small DVC project whose training stages
are the pipeline's (their deps, params and outputs) with a command that only writes the outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from support.projects import DVC, QUICK_PIPELINE, REPO, load_stage, project_env, sh, write_quick_params

from mnist_repro.core.config import load_params
from mnist_repro.parallel.estimate import stage_recipes
from mnist_repro.parallel.pending import WIDTH, line, pending_runs

WRITE_OUTS = ("import pathlib, sys\n"
              "for name in sys.argv[1:]:\n"
              "    path = pathlib.Path(name)\n"
              "    path.parent.mkdir(parents=True, exist_ok=True)\n"
              "    path.write_text(name + '\\n')\n")
HERE = "Test CPU (1 cores)"


ANNOUNCE = "python -c 'from mnist_repro.parallel.pending import announce; announce(cpu=True)' && "


def training_project(root: Path, overrides: dict | None = None, announcing=()) -> Path:
    """The sources, the quick pipeline's params.yaml and dvc.yaml's training stages (their deps,
    params and outputs as committed), each one's command writing its outputs and nothing else
    (the groups in `announcing` first say the line, as the training stages do)."""
    import shutil

    root.mkdir(parents=True, exist_ok=True)
    for folder in ("src", "stages"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "data").mkdir()
    for stamp in ("params.ok", "MNIST.sha256"):     # check_params' and download's committed outputs
        (root / "data" / stamp).write_text(f"{stamp}\n")
    (root / "write_outs.py").write_text(WRITE_OUTS)
    write_quick_params(root, overrides={**QUICK_PIPELINE, **(overrides or {})})
    groups = {name.split("@")[0] for name in stage_recipes(load_params(root / "params.yaml"))}
    stages = {}
    for group, definition in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        if group in groups:
            outs = [next(iter(o)) if isinstance(o, dict) else o for o in definition["outs"]]
            say = ANNOUNCE if group in announcing else ""
            stages[group] = {**definition, "cmd": f"{say}python write_outs.py " + " ".join(outs)}
    assert set(stages) == groups
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    return root


def dvc_pending(root: Path, env: dict) -> set[str]:
    """The training stages `dvc status --json` reports in root."""
    status = json.loads(sh([*DVC, "status", "--json"], root, env).stdout or "{}")
    return set(status) & set(stage_recipes(load_params(root / "params.yaml")))


@pytest.mark.slow
def test_the_pending_runs_are_the_training_stages_dvc_status_reports(tmp_path, cli_env):
    root = training_project(tmp_path / "project", announcing={"published_path"})
    env = project_env(root, cli_env)
    sh([*DVC, "init", "-q", "--no-scm"], root, env)
    every = set(stage_recipes(load_params(root / "params.yaml")))
    assert set(pending_runs(root)) == dvc_pending(root, env) == every          # no dvc.lock yet
    out = sh([*DVC, "repro"], root, env, timeout=600).stdout
    # Under `dvc repro` (DVC_STAGE, DVC_ROOT) the stage says it: the runs DVC has not finished yet.
    started = out.split("Running stage 'published_path@skeleton-1'")[0].count("Running stage '")
    said = [text for text in out.splitlines() if "training run" in text]
    assert len(said) == 1 and said[0].startswith(f"{len(every) - started} training runs pending (this one too), "), out
    assert set(pending_runs(root)) == dvc_pending(root, env) == set()
    assert line(root, "train@skeleton", HERE).startswith("1 training run pending (this one), ")

    write_quick_params(root, overrides={**QUICK_PIPELINE, "variants.lr_scheduler.lr": 0.02,   # a param
                                        "data_path_test.seeds": [201, 202]})               # new stages
    with (root / "src/mnist_repro/training/published_path.py").open("a") as f:               # a dep
        f.write("# changed\n")
    (root / "metrics/confirmation/runs/seed_101.json").unlink()                             # an output gone
    (root / "metrics/compile_check/history/skeleton/seed_1.json").write_text("[]\n")         # one edited
    expected = {"train@lr_scheduler", "seed@lr_scheduler-2", "published_path@skeleton-1",
                "data_path_published@skeleton-201", "data_path_ours@skeleton-202", "data_path_published@skeleton-202",
                "confirm@101", "compile_check@skeleton-1"}
    assert set(pending_runs(root)) == dvc_pending(root, env) == expected
    assert line(root, "train@lr_scheduler", HERE).startswith(f"{len(expected)} training runs pending (this one too)")
    assert line(root, "train@skeleton", HERE).startswith(f"{len(expected) + 1} training runs pending (this one too)")


def run_file(root: Path, variant: str, seed: int, seconds: float, device: str = HERE) -> None:
    """A committed run file of the quick params' size (1 epoch of 256 images: no scaling)."""
    path = root / "metrics" / "runs" / variant / f"seed_{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"variant": variant, "data_path": "ours", "mixed_precision": "no", "epochs": 1,
                                "train_images": 256, "device_name": device, "wall_seconds": seconds}))


def test_the_line_counts_the_pending_runs_times_them_and_names_the_faster_ways(tmp_path):
    root = training_project(tmp_path / "project")
    run_file(root, "skeleton", 1, 500)
    run_file(root, "skeleton", 2, 700)
    # No dvc.lock: every training stage pends; skeleton's four runs on our data path in fp32
    # (train@, seed_slow@, compile_check@, data_path_ours@) at the median 600 s, the other seven untimed.
    said = line(root, "train@skeleton", HERE)
    assert said.startswith("11 training runs pending (this one too): ~40 min serially here (7 untimed); "
                           "faster: "), said
    assert len(said) <= WIDTH and all(way in said for way in ("matrix", "train@<", "--quick")), said
    other = line(root, "train@skeleton", "Other CPU (2 cores)")       # timed on another machine: it is named
    assert "~40 min serially on Test CPU" in other and "here" not in other, other
    assert len(other) <= WIDTH and all(way in other for way in ("matrix", "train@<", "--quick")), other
    assert line(root, "compare", HERE) is None                        # not a training stage


def call_stage(name: str, argv: list, monkeypatch, capsys, env: dict) -> tuple[str, str]:
    """stages/<name>.py's main with its training stubbed: (printed before training began, after)."""
    stage = load_stage(name)
    before = []
    stub = "train_and_write" if name == "train" else "rerun_and_write"
    monkeypatch.setattr(stage, stub, lambda *a, **k: before.append(capsys.readouterr().out))
    for key in ("DVC_STAGE", "DVC_ROOT", "RANK", "MNIST_REPRO_SLOT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    stage.main([str(a) for a in argv])
    assert len(before) == 1, "training did not start"
    return before[0], capsys.readouterr().out


@pytest.mark.parametrize("name, stage, argv", [
    ("train", "seed@lr_scheduler-2", ["lr_scheduler", "--seed", "2"]),
    ("published_path", "published_path@skeleton-1", ["skeleton", "--seed", "1", "--metrics", "m", "--history", "h"])])
def test_a_training_stage_under_dvc_says_it_once_before_training_and_nothing_else(name, stage, argv, tmp_path,
                                                                                  monkeypatch, capsys):
    root = training_project(tmp_path / "project")
    argv = [*argv, "--params", root / "params.yaml"]
    under_dvc = {"DVC_STAGE": stage, "DVC_ROOT": root}
    said, after = call_stage(name, argv, monkeypatch, capsys, under_dvc)
    assert said.startswith("11 training runs pending (this one too), untimed (no committed run like them); ") \
        and not after
    assert said.count("\n") == 1 and len(said) <= WIDTH + 1
    for quiet in ({}, {**under_dvc, "RANK": 1}, {**under_dvc, "MNIST_REPRO_SLOT": "cpu:0"}):
        assert call_stage(name, argv, monkeypatch, capsys, quiet) == ("", ""), quiet
    (root / "dvc.lock").write_text("stages: [unclosed\n")             # unreadable: training goes on, silently
    assert call_stage(name, argv, monkeypatch, capsys, under_dvc) == ("", "")
