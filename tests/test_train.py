"""Training on a real slice of MNIST: metrics schema, OneCycleLR, divergence, resume, the
misclassified-images file, holdout evaluation, mixed precision against params.launch, and a
step loop that never waits on the device."""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import math
import os
import shutil
import signal
import sys
import time
import types

import pytest
import torch
from support.processes import (ONE_THREAD, Started, evaluate_saved, run_cmd, run_until_checkpoint, train_cmd,
                               without_timing)
from torch.overrides import TorchFunctionMode

from mnist_repro.training import train
from mnist_repro.core.config import load_params
from mnist_repro.core.errors import DivergedError, ParamsError
from mnist_repro.core.data import load_split
from mnist_repro.core.models import build_model
from mnist_repro.training.checkpoint import Checkpoint, run_fingerprint
from mnist_repro.training.device_data import load_datasets
from mnist_repro.training.launch import make_accelerator
from mnist_repro.training.published_path import rerun_and_write
from mnist_repro.training.summary import launch_record, misclassified
from mnist_repro.training.train import run_training

TRAIN_LIMIT, TEST_LIMIT, BATCH, EPOCHS = 500, 200, 64, 3  # 500/64: a short last batch, 8 steps
QUICK = {"train.batch_size": BATCH, **ONE_THREAD}  # params overrides of every run here
VARIANT = "lr_scheduler"

METRIC_KEYS = {"params", "best_train_acc", "best_test_acc", "best_test_epoch", "final_test_acc",
               "min_test_loss", "epochs", "num_processes", "num_machines", "device", "mixed_precision",
               "evaluated_on", "wall_seconds", "optimizer_steps", "train_images", "test_images", "data_path",
               "slot"}
HISTORY_KEYS = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, quick_params, mnist_root, repo_root, cli_env):
    base = tmp_path_factory.mktemp("train")
    params = quick_params(base, epochs=EPOCHS, train_limit=TRAIN_LIMIT, test_limit=TEST_LIMIT,
                          overrides=QUICK)
    return dict(base=base, params=params, data=mnist_root, repo=repo_root, env=cli_env)


def node0(checkpoint):
    """A one-machine run's own copy of its resume state."""
    return checkpoint / "node-0"


@pytest.fixture(scope="module")
def uninterrupted(setup):
    """One full CLI run with a checkpoint dir: the reference for schema, schedule and resume."""
    out = setup["base"] / "full"
    ckpt = out / "ckpt"
    proc = run_cmd(train_cmd(VARIANT, setup["params"], setup["data"], out, checkpoint=ckpt, launch=False,
                             outputs=("metrics", "history", "model", "errors")), setup["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(out=out, ckpt=ckpt, proc=proc, metrics=json.loads((out / "metrics.json").read_text()),
                history=json.loads((out / "history.json").read_text()))


@pytest.mark.slow
def test_metrics_schema(uninterrupted):
    m, history = uninterrupted["metrics"], uninterrupted["history"]
    assert METRIC_KEYS <= set(m)
    assert m["variant"] == VARIANT and m["params"] == 6720
    assert m["epochs"] == EPOCHS == len(history)
    assert m["num_processes"] == 1 and m["num_machines"] == 1 and m["device"] in ("cpu", "cuda")
    assert m["mixed_precision"] == "no" and m["evaluated_on"] == "test"
    assert m["data_path"] == "ours" and m["slot"] is None  # no MNIST_REPRO_SLOT: not pinned by the matrix runner
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
    # the printed summary is a few lines read off the written one (the JSON stays in the file)
    printed = uninterrupted["proc"].stdout
    assert printed.count(f"{VARIANT} seed 1: {EPOCHS} epochs in ") == 1 and "'variant'" not in printed
    assert f"final {m['final_test_acc']:.2f}%  best {m['best_test_acc']:.2f}% (epoch {m['best_test_epoch']})" in printed
    assert [s["epochs"] for s in m["segments"]] == [[1, EPOCHS]]


@pytest.mark.slow
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


@pytest.mark.slow
def test_saved_model_reproduces_the_recorded_test_metrics(uninterrupted, setup):
    """model.pt loads into the architecture and is the model the last epoch was measured on."""
    saved = evaluate_saved(uninterrupted["out"] / "model.pt", VARIANT, setup["params"], setup["data"])
    last = uninterrupted["history"][-1]
    assert saved["loss"] == pytest.approx(last["test_loss"], rel=1e-5)
    assert saved["correct"] == round(last["test_acc"] * TEST_LIMIT / 100)


@pytest.mark.slow
def test_errors_file_lists_exactly_the_saved_models_mistakes(uninterrupted, setup):
    errors = json.loads((uninterrupted["out"] / "errors.json").read_text())
    assert (errors["variant"], errors["seed"], errors["evaluated_on"], errors["test_images"]) == (
        VARIANT, 1, "test", TEST_LIMIT)
    saved = evaluate_saved(uninterrupted["out"] / "model.pt", VARIANT, setup["params"], setup["data"])
    expected = [{"index": i, "label": t, "predicted": p}
                for i, (t, p) in enumerate(zip(saved["labels"], saved["predicted"])) if t != p]
    assert errors["misclassified"] == expected
    assert len(expected) == TEST_LIMIT - round(uninterrupted["metrics"]["final_test_acc"] * TEST_LIMIT / 100)


@pytest.mark.slow
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


@pytest.mark.slow
def test_divergence_stops_with_a_clear_error(setup, tmp_path, quick_params):
    params = quick_params(tmp_path / "diverge.yaml", epochs=2, train_limit=512, test_limit=100,
                          overrides={**QUICK, "variants.skeleton.lr": 1e6})
    out = tmp_path / "out"
    out.mkdir()
    proc = run_cmd(train_cmd("skeleton", params, setup["data"], out, launch=False), setup["env"])
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
    ckpt = out / "ckpt"
    cmd = train_cmd(VARIANT, setup["params"], setup["data"], out, checkpoint=ckpt, launch=False)
    _, (saved,) = run_until_checkpoint([cmd], setup["env"], out / "logs", [node0(ckpt) / "run.json"])
    # copies of the unfinished checkpoint, for the changed-params, unpickling and damaged-state tests
    for copy in ("ckpt-copy", "ckpt-safe", "ckpt-truncated-model", "ckpt-truncated-optimizer", "ckpt-bad-manifest"):
        shutil.copytree(ckpt, out / copy)
    return dict(out=out, ckpt=ckpt, saved_epochs=len(saved["history"]))


@pytest.mark.slow
def test_killed_run_leaves_resume_state_and_no_metrics(killed):
    assert 1 <= killed["saved_epochs"] < EPOCHS
    assert [p.name for p in killed["ckpt"].iterdir()] == ["node-0"]  # one machine: one node's copy
    assert (node0(killed["ckpt"]) / f"epoch-{killed['saved_epochs']}").is_dir()
    assert not (killed["out"] / "metrics.json").exists()


@pytest.mark.slow
def test_resume_gives_the_same_result_as_an_uninterrupted_run(killed, uninterrupted, setup):
    proc = run_cmd(train_cmd(VARIANT, setup["params"], setup["data"], killed["out"], checkpoint=killed["ckpt"],
                             launch=False), setup["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming after epoch {killed['saved_epochs']}" in proc.stdout
    metrics = json.loads((killed["out"] / "metrics.json").read_text())
    history = json.loads((killed["out"] / "history.json").read_text())
    assert without_timing(metrics) == without_timing(uninterrupted["metrics"])
    assert without_timing(history) == without_timing(uninterrupted["history"])
    # finished: only a finished manifest is left, in both runs
    for ckpt in (killed["ckpt"], uninterrupted["ckpt"]):
        assert [p.name for p in ckpt.iterdir()] == ["node-0"]
        assert [p.name for p in node0(ckpt).iterdir()] == ["run.json"]
        manifest = json.loads((node0(ckpt) / "run.json").read_text())
        assert manifest["finished"] is True and set(manifest) == {"fingerprint", "finished"}


@pytest.mark.slow
def test_finished_checkpoint_is_not_resumed(uninterrupted, setup):
    """A finished manifest under this very fingerprint offers nothing to resume."""
    params = load_params(setup["params"])
    fp = run_fingerprint(params.train, params.variant(VARIANT), params.train.seed, make_accelerator())
    assert json.loads((node0(uninterrupted["ckpt"]) / "run.json").read_text()) == {"fingerprint": fp,
                                                                                    "finished": True}
    assert Checkpoint(uninterrupted["ckpt"], fp).states() == []


@pytest.mark.slow
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
    manifest = json.loads((node0(ckpt) / "run.json").read_text())
    assert manifest["state"] == f"epoch-{EPOCHS}" and len(manifest["history"]) == EPOCHS
    # and the state before it, so a node one manifest behind still shares an epoch with it
    assert manifest["previous"]["state"] == f"epoch-{EPOCHS - 1}"
    assert manifest["previous"]["history"] == manifest["history"][:-1]
    assert sorted(p.name for p in node0(ckpt).iterdir()) == [f"epoch-{EPOCHS - 1}", f"epoch-{EPOCHS}", "run.json"]
    result.checkpoint.finish(make_accelerator())
    assert [p.name for p in node0(ckpt).iterdir()] == ["run.json"]


@pytest.mark.slow
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


# --- a damaged resume state: one line saying so, then the run starts over --------------------


def shown_lines(text: str) -> list[str]:
    """The non-empty lines a terminal shows (the last of tqdm's \r redraws)."""
    return [line.split("\r")[-1] for line in text.split("\n") if line.split("\r")[-1].strip()]


@pytest.mark.slow
@pytest.mark.parametrize("part, file", [("model", "model.safetensors"), ("optimizer", "optimizer.bin")])
def test_a_truncated_state_is_reported_in_one_line_and_the_run_starts_over(killed, uninterrupted, setup, part, file):
    """The weights are the first file loaded, the optimiser's the second: a state that fails
    after the weights loaded must still start over from the fresh weights."""
    ckpt = killed["out"] / f"ckpt-truncated-{part}"
    state = node0(ckpt) / f"epoch-{killed['saved_epochs']}"
    damaged = state / file
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])  # a disk that filled up
    out = killed["out"] / f"after-truncation-{part}"
    proc = run_cmd(train_cmd(VARIANT, setup["params"], setup["data"], out, checkpoint=ckpt, launch=False),
                   setup["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    [line] = [line for line in shown_lines(proc.stdout + proc.stderr) if "warning" in line]
    assert line.startswith(f"warning: {state}: the saved state cannot be loaded (")
    assert line.endswith("); starting over from epoch 1")
    assert "resuming" not in proc.stdout and f"{VARIANT} epoch 1/{EPOCHS}" in proc.stdout
    # from scratch means exactly that: the uninterrupted run's numbers
    assert without_timing(json.loads((out / "metrics.json").read_text())) == without_timing(uninterrupted["metrics"])
    assert without_timing(json.loads((out / "history.json").read_text())) == without_timing(uninterrupted["history"])


@pytest.mark.slow
def test_an_unreadable_manifest_is_reported_in_one_line_and_the_run_starts_over(killed, setup, capsys):
    manifest = node0(killed["out"] / "ckpt-bad-manifest") / "run.json"
    manifest.write_text(manifest.read_text()[:40])
    params = load_params(setup["params"])
    result = run_training(params.variant(VARIANT), params.train, setup["data"], checkpoint_dir=manifest.parent.parent,
                          accelerator=make_accelerator())
    [line] = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert line.startswith(f"warning: {manifest}: not a readable resume manifest (JSONDecodeError: ")
    assert line.endswith("); starting over")
    assert [h["epoch"] for h in result.history] == list(range(1, EPOCHS + 1))


# --- Ctrl-C: one line on how to resume, under the launcher dvc.yaml uses ----------------------


@pytest.mark.slow
def test_ctrl_c_says_in_one_line_how_to_resume_and_the_rerun_resumes(setup, uninterrupted, tmp_path):
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    cmd = train_cmd(VARIANT, setup["params"], setup["data"], out, checkpoint=ckpt)
    run = Started(cmd, setup["env"], tmp_path / "run")  # its own process group, as a terminal's job
    deadline = time.monotonic() + 240
    while not (node0(ckpt) / "run.json").exists():
        assert run.returncode is None and time.monotonic() < deadline, run.stderr[-3000:]
        time.sleep(0.01)
    os.killpg(run.proc.pid, signal.SIGINT)  # what Ctrl-C does: the launcher and the stage get it
    assert run.proc.wait(timeout=120) == 130
    [line] = shown_lines(run.stderr)
    done = len(json.loads((node0(ckpt) / "run.json").read_text())["history"])
    assert line == (f"interrupted: epochs 1-{done} are saved in {ckpt}; rerun the same command to resume "
                    f"after epoch {done}")
    assert "Traceback" not in run.stdout
    assert not (out / "metrics.json").exists()

    proc = run_cmd(cmd, setup["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming after epoch {done} " in proc.stdout
    assert without_timing(json.loads((out / "metrics.json").read_text())) == without_timing(uninterrupted["metrics"])


def test_under_dvc_the_line_names_the_stage_to_repro(setup, tmp_path, monkeypatch):
    from mnist_repro.core import cli

    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.setenv("DVC_STAGE", "compare")
    assert cli.interrupted_line([], cli.rerun_command()) == (
        "interrupted: nothing was saved; rerun `dvc repro compare` to start again")
    # a training stage's line (what it saved, if anything): tests/test_resume.py


# --- by hand: the knobs of one run, and what a run file records -------------------------------


def test_quick_and_the_size_knobs_override_params_for_one_run(setup, run_stage, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MNIST_REPRO_SLOT", "cores-0-1")  # as the matrix runner pins a run
    stage = [VARIANT, "--params", setup["params"], "--data", setup["data"]]
    run_stage("train", [*stage, "--quick", "--test-limit", 100, "--history", tmp_path / "quick.json"])
    assert [(h["epoch"], h["train_images"], h["test_images"]) for h in json.loads(
        (tmp_path / "quick.json").read_text())] == [(1, train.QUICK["train_limit"], 100)]
    run_stage("train", [*stage, "--epochs", 2, "--train-limit", 128, "--test-limit", 100,
                        "--history", tmp_path / "two.json", "--metrics", tmp_path / "two-metrics.json"])
    assert [(h["epoch"], h["train_images"], h["test_images"]) for h in json.loads(
        (tmp_path / "two.json").read_text())] == [(1, 128, 100), (2, 128, 100)]
    assert json.loads((tmp_path / "two-metrics.json").read_text())["slot"] == "cores-0-1"
    with pytest.raises(SystemExit) as info:
        run_stage("train", ["--help"])
    assert info.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert all(flag in shown for flag in ("--epochs", "--train-limit", "--test-limit", "--quick"))
    assert "1 epoch on the first 2,048 training and 1,000 test images" in shown


def test_the_slot_is_null_unless_the_matrix_runner_set_one(monkeypatch):
    monkeypatch.delenv("MNIST_REPRO_SLOT", raising=False)
    assert launch_record()["slot"] is None
    monkeypatch.setenv("MNIST_REPRO_SLOT", "gpu-3")
    assert launch_record()["slot"] == "gpu-3"


def test_a_published_path_run_file_has_our_keys_and_its_data_path(setup, tmp_path, quick_params, run_stage):
    path = quick_params(tmp_path, epochs=1, train_limit=256, test_limit=100, overrides=QUICK)
    params = load_params(path)
    rerun_and_write(params, "skeleton", setup["data"], seed=2, metrics=tmp_path / "m.json", history=tmp_path / "h.json")
    m, history = json.loads((tmp_path / "m.json").read_text()), json.loads((tmp_path / "h.json").read_text())
    # our data path's files for the same run, written by the train stage
    run_stage("train", ["skeleton", "--params", path, "--data", setup["data"], "--seed", 2,
                        "--metrics", tmp_path / "ours.json", "--history", tmp_path / "ours_history.json"])
    ours, ours_history = (json.loads((tmp_path / name).read_text()) for name in ("ours.json", "ours_history.json"))
    assert set(m) == set(ours) and set(history[0]) == set(ours_history[0])
    assert (m["data_path"], m["variant"], m["seed"], m["epochs"]) == ("published", "skeleton", 2, 1)
    assert (m["train_images"], m["test_images"], m["optimizer_steps"]) == (256, 100, 4)
    assert (m["num_processes"], m["device"], m["mixed_precision"]) == (1, "cpu", "no")


# --- launch settings: the run must be the one params.launch describes ------------------------


@pytest.mark.slow
def test_precision_other_than_params_launch_is_refused_before_anything_is_written(setup, tmp_path):
    """params say launch.mixed_precision "no"; a hand-typed --mixed_precision bf16 is refused."""
    out = tmp_path / "out"
    cmd = train_cmd(VARIANT, setup["params"], setup["data"], out, checkpoint=out / "ckpt",
                    launch_extra=["--mixed_precision", "bf16"], outputs=("metrics", "history", "model", "errors"))
    proc = run_cmd(cmd, setup["env"])
    assert proc.returncode == 1
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        "error: launch.mixed_precision: params.yaml says 'no' but this run has 'bf16'; launch with dvc.yaml's "
        "command (it passes params.yaml's launch flags) or change launch.mixed_precision"]
    assert "epoch 1" not in proc.stdout
    assert not out.exists()  # no outputs, no checkpoint


def test_fp16_on_a_cpu_only_host_is_refused(setup, tmp_path, monkeypatch, capsys, run_stage):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # what `accelerate launch --mixed_precision fp16` sets
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        run_stage("train", [VARIANT, "--params", setup["params"], "--data", setup["data"],
                            "--metrics", out / "metrics.json", "--mixed-precision", "fp16"])
    assert info.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        'error: launch.mixed_precision: fp16 needs a CUDA GPU (no gradient scaler on CPU); use bf16 or "no" '
        'on this machine']
    assert not out.exists()


@pytest.fixture(scope="module")
def bf16_killed(setup, quick_params):
    """A bf16 run of params that say launch.mixed_precision: bf16, killed after its first
    checkpoint; one copy of its state is kept for an fp32 run to (not) resume."""
    out = setup["base"] / "bf16"
    out.mkdir()
    params = quick_params(out / "params.yaml", epochs=EPOCHS, train_limit=TRAIN_LIMIT, test_limit=TEST_LIMIT,
                          overrides={**QUICK, "launch.mixed_precision": "bf16"})
    ckpt = out / "ckpt"
    cmd = train_cmd(VARIANT, params, setup["data"], out, checkpoint=ckpt)
    _, (saved,) = run_until_checkpoint([cmd], setup["env"], out / "logs", [node0(ckpt) / "run.json"])
    shutil.copytree(ckpt, out / "ckpt-for-fp32")
    return dict(out=out, params=params, ckpt=ckpt, saved=saved)


@pytest.mark.slow
def test_bf16_checkpoint_is_not_resumed_by_an_fp32_run(bf16_killed, setup, capsys):
    params = load_params(bf16_killed["params"])
    assert params.train == load_params(setup["params"]).train  # only launch.mixed_precision differs
    ckpt = bf16_killed["out"] / "ckpt-for-fp32"
    accelerator = make_accelerator()
    assert accelerator.mixed_precision == "no"
    # the state is resumable by a bf16 run: only the precision stands between it and this run
    as_bf16 = types.SimpleNamespace(num_processes=1, device=accelerator.device, mixed_precision="bf16")
    bf16_fp = run_fingerprint(params.train, params.variant(VARIANT), params.train.seed, as_bf16)
    newest = Checkpoint(ckpt, bf16_fp).states()[0]
    assert (newest["state"], newest["history"]) == (bf16_killed["saved"]["state"], bf16_killed["saved"]["history"])
    assert run_fingerprint(params.train, params.variant(VARIANT), params.train.seed, accelerator) != bf16_fp

    result = run_training(params.variant(VARIANT), params.train, setup["data"], checkpoint_dir=ckpt,
                          accelerator=accelerator)
    out = capsys.readouterr().out
    assert "resuming" not in out and f"{VARIANT} epoch 1/{EPOCHS}" in out
    assert [h["epoch"] for h in result.history] == list(range(1, EPOCHS + 1))
    assert result.metrics["mixed_precision"] == "no"


@pytest.mark.slow
def test_bf16_run_resumes_and_records_its_precision(bf16_killed, setup):
    out, ckpt = bf16_killed["out"], bf16_killed["ckpt"]
    proc = run_cmd(train_cmd(VARIANT, bf16_killed["params"], setup["data"], out, checkpoint=ckpt), setup["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming after epoch {len(bf16_killed['saved']['history'])}" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mixed_precision"] == "bf16" and metrics["epochs"] == EPOCHS
    assert metrics["train_images"] == TRAIN_LIMIT and metrics["test_images"] == TEST_LIMIT
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == list(range(1, EPOCHS + 1))


# --- holdout: evaluate on the last training images instead of the test set ------------------


def test_holdout_evaluates_on_the_last_training_images(setup):
    params = load_params(setup["params"])
    cfg = dataclasses.replace(params.train, epochs=1, train_limit=600, holdout=100, batch_size=128)
    accelerator = make_accelerator()
    result = run_training(params.variant("skeleton"), cfg, setup["data"], accelerator=accelerator)
    m = result.metrics
    assert m["evaluated_on"] == "holdout (last 100 training images)"
    assert m["train_images"] == 500 and m["test_images"] == 100 and m["optimizer_steps"] == 4
    images, labels = load_split(setup["data"], train=True, limit=600)
    assert torch.equal(result.evaluation.images.cpu(), images[500:])
    assert torch.equal(result.evaluation.labels.cpu(), labels[500:])
    # the recorded accuracy is the model's on those 100 images
    errors = misclassified(result, cfg, accelerator)
    assert errors["evaluated_on"] == m["evaluated_on"] and errors["test_images"] == 100
    assert result.history[-1]["test_acc"] == pytest.approx(100 - len(errors["misclassified"]), abs=1e-9)
    assert all(e["label"] == int(labels[500 + e["index"]]) != e["predicted"] for e in errors["misclassified"])


def test_holdout_of_every_training_image_is_refused(setup):
    params = load_params(setup["params"])
    cfg = dataclasses.replace(params.train, train_limit=0, holdout=60_000)  # train_limit 0: all 60,000
    with pytest.raises(ParamsError, match=r"^train\.holdout: 60000 held-out images leave none of the 60000 "):
        load_datasets(setup["data"], cfg, "cpu")


# --- the step loop reads nothing back from the device ---------------------------------------

# Tensor methods that can copy a value to the host, which makes a GPU step wait for the device.
HOST_READS = {"item", "tolist", "cpu", "numpy", "to", "__bool__", "__int__", "__float__", "__index__",
              "nonzero"}


class HostReads(TorchFunctionMode):
    """Counts the host reads of every torch call made while it is active."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_function__(self, func, arg_types, args=(), kwargs=None):
        if getattr(func, "__name__", None) in HOST_READS:
            self.calls[func.__name__] += 1
        return func(*args, **(kwargs or {}))


def epoch_host_reads(setup, steps: int) -> collections.Counter:
    """One epoch of `steps` optimiser steps of lr_scheduler (augmentation, dropout, BatchNorm,
    OneCycleLR) in this process, and the host reads it made."""
    params = load_params(setup["params"])
    variant = params.variant(VARIANT)
    cfg = dataclasses.replace(params.train, train_limit=steps * params.train.batch_size)
    accelerator = make_accelerator()
    data, _ = load_datasets(setup["data"], dataclasses.replace(cfg, test_limit=10), accelerator.device)
    model = build_model(variant.model, variant.dropout)
    optimizer = train.build_optimizer(model, variant)
    scheduler = train.build_scheduler(optimizer, variant, epochs=1, steps=steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    with HostReads() as reads:
        result = train.train_one_epoch(model, optimizer, scheduler, data, cfg, variant, cfg.seed, 1, accelerator)
    assert result["steps"] == steps
    return reads.calls


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_an_epoch_reads_from_the_device_a_fixed_number_of_times(setup, monkeypatch):
    """No progress bar (stderr is no terminal): an epoch of 2N steps reads back exactly what one
    of N steps does, the loss and accuracy totals once at its end."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    short, long = epoch_host_reads(setup, 3), epoch_host_reads(setup, 6)
    assert short == long
    assert short["item"] + short["tolist"] >= 1  # the epoch's totals: the counter sees reads


def test_the_counter_sees_a_progress_bar_refreshed_every_step(setup, monkeypatch):
    """The counter's control: on a terminal, with the bar refreshed every step, the reads grow
    with the steps (the loss and accuracy it shows come from the device)."""
    monkeypatch.setattr(sys, "stderr", _Terminal())
    monkeypatch.setattr(train, "LOG_EVERY", 1)
    short, long = epoch_host_reads(setup, 3), epoch_host_reads(setup, 6)
    assert long["item"] - short["item"] >= 6 - 3  # at least one read per extra step


def test_no_weight_decay_is_the_published_optimiser_step_for_step(repo_root):
    """optimizer sgd with weight_decay 0 (every published variant) trains exactly as
    torch.optim.SGD(lr, momentum) did before those keys existed, so stages recorded under the
    old code stay valid (README "Add a variant"); any other setting changes the steps."""
    variant = load_params(repo_root / "params.yaml").variant("lr_scheduler")
    assert (variant.optimizer, variant.weight_decay) == ("sgd", 0)

    def weights_after_steps(make_optimizer):
        torch.manual_seed(0)
        model = build_model(variant.model, variant.dropout)
        optimizer = make_optimizer(model)
        x, y = torch.randn(16, 1, 28, 28), torch.arange(16) % 10
        for _ in range(3):
            optimizer.zero_grad()
            torch.nn.functional.nll_loss(model(x), y).backward()
            optimizer.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    published = weights_after_steps(lambda m: torch.optim.SGD(m.parameters(), lr=variant.lr, momentum=variant.momentum))
    assert torch.equal(weights_after_steps(lambda m: train.build_optimizer(m, variant)), published)
    for change in ({"weight_decay": 5e-4}, {"optimizer": "nesterov"}, {"optimizer": "adam"}):
        other = dataclasses.replace(variant, **change)
        assert not torch.equal(weights_after_steps(lambda m: train.build_optimizer(m, other)), published), change


def test_one_cycle_cycles_adams_beta1_as_it_cycles_sgds_momentum(repo_root):
    """Under OneCycleLR, Adam's beta1 plays SGD momentum's part: 0.95 at the start, 0.85 at the peak."""
    variant = dataclasses.replace(load_params(repo_root / "params.yaml").variant("lr_scheduler"),
                                  optimizer="adam", lr=0.01, momentum=0.9)
    optimizer = train.build_optimizer(torch.nn.Linear(2, 2), variant)
    scheduler = train.build_scheduler(optimizer, variant, epochs=1, steps=10)
    beta1 = []
    for _ in range(10):
        beta1.append(optimizer.param_groups[0]["betas"][0])
        optimizer.step()
        scheduler.step()
    assert beta1[0] == pytest.approx(0.95) and min(beta1) == pytest.approx(0.85)
    assert optimizer.param_groups[0]["betas"][1] == 0.999
