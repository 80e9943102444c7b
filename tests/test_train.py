"""Training on a real slice of MNIST: metrics schema, OneCycleLR, divergence, resume."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mnist_repro.config import load_params
from mnist_repro.models import build_model
from mnist_repro.train import DivergedError, make_accelerator, run_training

TRAIN_LIMIT, TEST_LIMIT, BATCH, EPOCHS = 500, 200, 64, 3  # 500/64: a short last batch, 8 steps
VARIANT = "lr_scheduler"
TIMEOUT = 300

METRIC_KEYS = {"params", "best_train_acc", "best_test_acc", "best_test_epoch", "final_test_acc",
               "min_test_loss", "epochs", "num_processes", "device", "wall_seconds", "optimizer_steps",
               "train_images", "test_images"}
HISTORY_KEYS = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"}


def stage_cmd(repo_root, variant, params, data, out: Path, checkpoint=None, extra=()):
    cmd = [sys.executable, str(repo_root / "stages" / "train.py"), variant, "--params", str(params),
           "--data", str(data), "--metrics", str(out / "metrics.json"),
           "--history", str(out / "history.json"), "--model", str(out / "model.pt"), *extra]
    if checkpoint:
        cmd += ["--checkpoint", str(checkpoint)]
    return cmd


def run_stage(cmd, env, cwd) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, timeout=TIMEOUT)
    # decoded by hand: text=True would turn tqdm's carriage returns into newlines
    proc.stdout, proc.stderr = proc.stdout.decode(), proc.stderr.decode()
    return proc


def without_wall(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "wall_seconds"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, quick_params, mnist_root, repo_root, cli_env):
    base = tmp_path_factory.mktemp("train")
    params = quick_params(base, epochs=EPOCHS, train_limit=TRAIN_LIMIT, test_limit=TEST_LIMIT,
                          overrides={"train.batch_size": BATCH})
    return dict(base=base, params=params, data=mnist_root, repo=repo_root, env=cli_env)


@pytest.fixture(scope="module")
def uninterrupted(setup):
    """One full CLI run with a checkpoint dir: the reference for schema, schedule and resume."""
    out = setup["base"] / "full"
    out.mkdir()
    ckpt = out / "ckpt"
    proc = run_stage(stage_cmd(setup["repo"], VARIANT, setup["params"], setup["data"], out, ckpt),
                     setup["env"], setup["repo"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(out=out, ckpt=ckpt, proc=proc, metrics=json.loads((out / "metrics.json").read_text()),
                history=json.loads((out / "history.json").read_text()))


def test_metrics_schema(uninterrupted):
    m, history = uninterrupted["metrics"], uninterrupted["history"]
    assert METRIC_KEYS <= set(m)
    assert m["variant"] == VARIANT and m["params"] == 6720
    assert m["epochs"] == EPOCHS == len(history)
    assert m["num_processes"] == 1 and m["device"] in ("cpu", "cuda")
    assert m["train_images"] == TRAIN_LIMIT and m["test_images"] == TEST_LIMIT
    assert m["wall_seconds"] > 0
    for key in ("best_train_acc", "best_test_acc", "final_test_acc", "final_train_acc"):
        assert 0 <= m[key] <= 100 and round(m[key], 2) == m[key], key
    # the summary is the history's: best = the first epoch reaching the highest test accuracy
    test_accs = [h["test_acc"] for h in history]
    assert m["best_test_acc"] == round(max(test_accs), 2)
    assert m["best_test_epoch"] == test_accs.index(max(test_accs)) + 1
    assert m["final_test_acc"] == round(test_accs[-1], 2)
    assert m["best_train_acc"] == round(max(h["train_acc"] for h in history), 2)
    assert m["min_test_loss"] == round(min(h["test_loss"] for h in history), 4)
    # the printed summary is the written one
    assert uninterrupted["proc"].stdout.count("'variant': 'lr_scheduler'") == 1


def test_history_has_every_epoch(uninterrupted):
    history = uninterrupted["history"]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    for h in history:
        assert HISTORY_KEYS <= set(h)
        assert all(math.isfinite(h[k]) for k in ("train_loss", "test_loss", "lr"))
        assert h["train_images"] == TRAIN_LIMIT and h["test_images"] == TEST_LIMIT
        # accuracies are counts over the slice, not rounded
        assert round(h["test_acc"] * TEST_LIMIT / 100, 6) == round(h["test_acc"] * TEST_LIMIT / 100)
    # it learns something even on 500 images
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_model_file_loads_into_the_architecture(uninterrupted):
    model = build_model("lr_scheduler")
    model.load_state_dict(torch.load(uninterrupted["out"] / "model.pt", weights_only=True))


def test_one_cycle_schedule(uninterrupted, setup):
    m, history = uninterrupted["metrics"], uninterrupted["history"]
    steps = math.ceil(TRAIN_LIMIT / BATCH)
    assert m["optimizer_steps"] == EPOCHS * steps == sum(h["steps"] for h in history)
    max_lr = load_params(setup["params"]).variant(VARIANT).lr
    # torch's defaults: warm up from max_lr/25 over 30% of the steps, anneal to max_lr/25/1e4
    assert history[-1]["lr"] == pytest.approx(max_lr / 25 / 1e4, rel=1e-6)
    lrs = [h["lr"] for h in history]
    assert max(lrs) <= max_lr and lrs[-1] < lrs[0]
    # an independent OneCycleLR over the same steps gives the same end-of-epoch values
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=max_lr, momentum=0.7)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, epochs=EPOCHS, steps_per_epoch=steps)
    expected = []
    for _ in range(EPOCHS):
        for _ in range(steps):
            lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
        expected.append(lr)
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_constant_schedule_in_process(setup):
    """run_training directly: a constant-lr variant keeps its lr; no checkpoint asked, none made."""
    params = load_params(setup["params"])
    cfg = dataclasses.replace(params.train, epochs=1, train_limit=256, test_limit=100, batch_size=128)
    result = run_training(params.variant("skeleton"), cfg, setup["data"], accelerator=make_accelerator())
    assert [h["lr"] for h in result.history] == [0.01]
    assert result.metrics["optimizer_steps"] == 2 and result.metrics["params"] == 4572
    assert result.checkpoint is None


def test_divergence_stops_with_a_clear_error(setup, tmp_path, quick_params):
    params = quick_params(tmp_path / "diverge.yaml", epochs=2, train_limit=512, test_limit=100,
                          overrides={"variants.skeleton.lr": 1e6})
    out = tmp_path / "out"
    out.mkdir()
    proc = run_stage(stage_cmd(setup["repo"], "skeleton", params, setup["data"], out),
                     setup["env"], setup["repo"])
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    # tqdm redraws with \r on the same line; what a terminal shows last is the error
    lines = [line for line in proc.stderr.split("\n") if line.strip()]
    assert len(lines) == 1
    shown = lines[0].split("\r")[-1]
    assert shown.startswith("error: skeleton: loss became NaN or infinite at epoch 1, step ")
    assert "variants.skeleton.lr" in shown
    assert list(out.iterdir()) == []  # no metrics, history or model


def test_divergence_in_process_names_variant_epoch_step(setup):
    params = load_params(setup["params"])
    variant = dataclasses.replace(params.variant("skeleton"), lr=1e6)
    cfg = dataclasses.replace(params.train, epochs=2, train_limit=512, test_limit=100, batch_size=128)
    with pytest.raises(DivergedError, match=r"^skeleton: .* at epoch 1, step \d+;"):
        run_training(variant, cfg, setup["data"], accelerator=make_accelerator())


@pytest.fixture(scope="module")
def killed(setup):
    """A CLI run SIGKILLed right after its first checkpoint manifest appears."""
    out = setup["base"] / "killed"
    out.mkdir()
    ckpt = out / "ckpt"
    log = (out / "stdout.txt").open("w")
    proc = subprocess.Popen(stage_cmd(setup["repo"], VARIANT, setup["params"], setup["data"], out, ckpt),
                            env=setup["env"], cwd=setup["repo"], stdout=log, stderr=subprocess.DEVNULL)
    manifest = ckpt / "run.json"
    deadline = time.monotonic() + TIMEOUT
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if manifest.exists() and json.loads(manifest.read_text()).get("state"):
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        proc.wait(timeout=60)
        log.close()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    saved = json.loads(manifest.read_text())
    # a copy of the unfinished checkpoint, for the changed-params test
    shutil.copytree(ckpt, out / "ckpt-copy")
    shutil.copytree(ckpt, out / "ckpt-safe")
    return dict(out=out, ckpt=ckpt, saved_epochs=len(saved["history"]))


def test_killed_run_leaves_resume_state_and_no_metrics(killed):
    assert 1 <= killed["saved_epochs"] < EPOCHS
    assert (killed["ckpt"] / f"epoch-{killed['saved_epochs']}").is_dir()
    assert not (killed["out"] / "metrics.json").exists()


def test_resume_gives_the_same_result_as_an_uninterrupted_run(killed, uninterrupted, setup):
    proc = run_stage(stage_cmd(setup["repo"], VARIANT, setup["params"], setup["data"], killed["out"],
                               killed["ckpt"]), setup["env"], setup["repo"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming after epoch {killed['saved_epochs']}" in proc.stdout
    metrics = json.loads((killed["out"] / "metrics.json").read_text())
    history = json.loads((killed["out"] / "history.json").read_text())
    assert without_wall(metrics) == without_wall(uninterrupted["metrics"])
    assert history == uninterrupted["history"]
    # finished: only a finished manifest is left, in both runs
    for ckpt in (killed["ckpt"], uninterrupted["ckpt"]):
        assert [p.name for p in ckpt.iterdir()] == ["run.json"]
        manifest = json.loads((ckpt / "run.json").read_text())
        assert manifest["finished"] is True and set(manifest) == {"fingerprint", "finished"}


def test_finished_checkpoint_is_not_resumed(uninterrupted, setup):
    """A finished manifest, even under the same fingerprint, offers nothing to resume."""
    from mnist_repro.train import Checkpoint, run_fingerprint
    params = load_params(setup["params"])
    fp = run_fingerprint(params.train, params.variant(VARIANT), params.train.seed, 1)
    assert Checkpoint(uninterrupted["ckpt"], fp).resumable() is None


def test_checkpoint_from_other_params_is_not_resumed(killed, setup, capsys):
    """Same checkpoint dir, lr changed: the saved state must be ignored, training starts at epoch 1."""
    params = load_params(setup["params"])
    variant = dataclasses.replace(params.variant(VARIANT), lr=0.02)
    ckpt = killed["out"] / "ckpt-copy"
    result = run_training(variant, params.train, setup["data"], checkpoint_dir=ckpt,
                          accelerator=make_accelerator())
    out = capsys.readouterr().out
    assert "resuming" not in out
    assert f"{VARIANT} epoch 1/{EPOCHS}" in out
    assert [h["epoch"] for h in result.history] == list(range(1, EPOCHS + 1))
    assert result.history[-1]["lr"] == pytest.approx(0.02 / 25 / 1e4, rel=1e-6)
    # and the directory now holds this run's state, under its own fingerprint
    manifest = json.loads((ckpt / "run.json").read_text())
    assert manifest["state"] == f"epoch-{EPOCHS}" and len(manifest["history"]) == EPOCHS
    result.checkpoint.finish(make_accelerator())
    assert [p.name for p in ckpt.iterdir()] == ["run.json"]


def test_resume_unpickles_nothing(killed, setup, monkeypatch, capsys):
    """Every file of the saved state is read with torch.load(weights_only=True): a tampered
    checkpoint cannot run code."""
    real_load, calls = torch.load, []

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    params = load_params(setup["params"])
    run_training(params.variant(VARIANT), params.train, setup["data"], checkpoint_dir=killed["out"] / "ckpt-safe",
                 accelerator=make_accelerator())
    assert "resuming after epoch" in capsys.readouterr().out
    assert calls and all(w is True for w in calls), calls
