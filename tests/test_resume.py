"""A resume cannot silently change the experiment, and every message after a Ctrl-C is true.

- A resume whose CPU thread count differs from the saved segments' stops with one line; the
  recorded override resumes, and the run file lists each session (epochs, threads, slot,
  device, times) with the override.
- After a Ctrl-C the one line names saved epochs only when a state of the run's settings is on
  disk, and each case's rerun does what the line said: start again, or resume after epoch k,
  also under `dvc exp run --temp` (its temporary copy is deleted; --resume keeps the state at
  the project root).
- What a run prints by default fits 120 columns: its epoch lines and its closing summary (the
  JSON stays in the run file); `compare` prints an aligned table with nothing meaningless.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from support.processes import Started, error_lines, run_cmd, run_until_checkpoint, train_cmd
from support.projects import DVC, REPO, project_env, sh

from mnist_repro.training import checkpoint as ckpt_module
from mnist_repro.core import cli
from mnist_repro.training.checkpoint import THREADS_ENV, Checkpoint
from mnist_repro.core.config import load_params
from mnist_repro.core.errors import ParamsError
from mnist_repro.training.launch import make_accelerator
from mnist_repro.training.summary import WIDTH, summary_lines
from mnist_repro.training.train import run_training

VARIANT = "lr_scheduler"
QUICK = {"train.batch_size": 64, "train.cpu_threads": 1}


def shown(text: str) -> list[str]:
    """The non-empty lines a terminal shows (the last of any \\r redraws)."""
    return [line.split("\r")[-1] for line in text.split("\n") if line.split("\r")[-1].strip()]


def too_wide(text: str, tmp_path: Path) -> list[str]:
    """The lines wider than WIDTH, pytest's long temporary folder counted as a short path (a run
    prints the paths it is given; the pipeline's are short and relative)."""
    return [line for line in shown(text.replace(str(tmp_path), "/tmp/run")) if len(line) > WIDTH]


@pytest.fixture
def env(cli_env):
    return {**cli_env, "CUDA_VISIBLE_DEVICES": ""}


# --- the thread count --------------------------------------------------------------------------


def test_a_resume_on_another_thread_count_stops_with_one_line(tmp_path, quick_params, mnist_root):
    """A real two-epoch run keeps its state (unfinished: as if killed after its last epoch); the
    same run with train.cpu_threads 2 stops before loading it, naming both counts and the fixes."""
    params = load_params(quick_params(tmp_path, epochs=2, train_limit=256, test_limit=100, overrides=QUICK))
    variant, folder = params.variant(VARIANT), tmp_path / "ckpt"
    before = torch.get_num_threads()
    try:
        first = run_training(variant, params.train, mnist_root, checkpoint_dir=folder, accelerator=make_accelerator())
        assert [s["threads"] for s in first.metrics["segments"]] == [1]
        manifest = (folder / "node-0" / "run.json").read_text()
        other = dataclasses.replace(params.train, cpu_threads=2)
        with pytest.raises(ParamsError) as info:
            run_training(variant, other, mnist_root, checkpoint_dir=folder, accelerator=make_accelerator())
    finally:
        torch.set_num_threads(before)
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        f"{folder}: epochs 1-2 ran on 1 CPU thread(s) per process, this run has 2 (train.cpu_threads: 2), which "
        f"changes the numbers; resume with train.cpu_threads: 1, delete {folder} to start over, or set "
        f"{THREADS_ENV}=1 to mix them (recorded in the run file)")
    assert (folder / "node-0" / "run.json").read_text() == manifest  # the state is kept for the fix


@pytest.mark.slow
def test_a_killed_run_resumed_on_another_thread_count_stops_or_records_the_override(tmp_path, quick_params,
                                                                                     mnist_root, env):
    """The stage CLI: killed after its first saved epoch, rerun with 2 threads: one error line, exit 1,
    nothing written; with the override it resumes, and the run file's segments say what happened.
    (`python stages/train.py`, not under the launcher: the check is the stage's, and the launcher
    adds an interpreter and its torch import to each run; tests/test_train.py resumes under it.)"""
    one = quick_params(tmp_path / "one.yaml", epochs=3, train_limit=512, test_limit=200, overrides=QUICK)
    two = quick_params(tmp_path / "two.yaml", epochs=3, train_limit=512, test_limit=200,
                       overrides={**QUICK, "train.cpu_threads": 2})
    out, folder = tmp_path / "out", tmp_path / "ckpt"
    _, (saved,) = run_until_checkpoint([train_cmd(VARIANT, one, mnist_root, out, checkpoint=folder, launch=False)], env,
                                       tmp_path / "logs", [folder / "node-0" / "run.json"])
    done = len(saved["history"])

    refused = run_cmd(train_cmd(VARIANT, two, mnist_root, out, checkpoint=folder, launch=False), env)
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert error_lines(refused.stderr) == [
        f"error: {folder}: epochs 1-{done} ran on 1 CPU thread(s) per process, this run has 2 "
        f"(train.cpu_threads: 2), which changes the numbers; resume with train.cpu_threads: 1, delete {folder} "
        f"to start over, or set {THREADS_ENV}=1 to mix them (recorded in the run file)"], refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr and not (out / "metrics.json").exists()

    mixed = run_cmd(train_cmd(VARIANT, two, mnist_root, out, checkpoint=folder, launch=False),
                    {**env, THREADS_ENV: "1"})
    assert mixed.returncode == 0, mixed.stderr[-3000:]
    assert f"{VARIANT}: resuming after epoch {done} from {folder}" in mixed.stdout
    segments = json.loads((out / "metrics.json").read_text())["segments"]
    assert [(s["epochs"], s["threads"], s.get("override")) for s in segments] == [
        ([1, done], 1, None), ([done + 1, 3], 2, f"{THREADS_ENV}=1")]
    for s in segments:
        assert s["slot"] is None and s["device_name"] and s["started"] <= s["ended"]
    assert not too_wide(mixed.stdout + mixed.stderr, tmp_path)


# --- Ctrl-C: the line and what the rerun then does ----------------------------------------------


def interrupt(run: Started, until, timeout=240) -> None:
    """SIGINT to the run's whole process group (a terminal's Ctrl-C) once until() holds."""
    deadline = time.monotonic() + timeout
    while not until():
        assert run.returncode is None and time.monotonic() < deadline, run.stderr[-3000:]
        time.sleep(0.01)
    os.killpg(run.proc.pid, signal.SIGINT)
    assert run.proc.wait(timeout=120) == cli.INTERRUPTED, run.stderr[-3000:]


@pytest.mark.slow
def test_ctrl_c_before_any_saved_epoch_says_nothing_will_resume_and_the_rerun_starts_over(
        tmp_path, quick_params, mnist_root, env):
    """basic_setup's case: a Ctrl-C in the first epoch, its folder still empty. (The stage alone:
    tests/test_train.py's Ctrl-C goes through the launcher, which passes it on and adds nothing.)"""
    params = quick_params(tmp_path, epochs=2, train_limit=4096, test_limit=200, overrides=QUICK)
    out, folder = tmp_path / "out", tmp_path / "ckpt"
    cmd = train_cmd(VARIANT, params, mnist_root, out, checkpoint=folder, launch=False)
    run = Started(cmd, env, tmp_path / "run")
    interrupt(run, lambda: "saving each finished epoch in" in run.stdout)
    assert shown(run.stderr) == [
        "interrupted before any epoch was saved, so nothing will resume; rerun the same command to start again"]
    assert not (folder / "node-0" / "run.json").exists()

    rerun = run_cmd(cmd, env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming" not in rerun.stdout and f"{VARIANT} epoch 1/2" in rerun.stdout
    assert not too_wide(rerun.stdout + rerun.stderr, tmp_path)


def test_the_line_after_ctrl_c_names_only_what_is_on_disk(tmp_path, monkeypatch):
    """Each case of checkpoint.interrupted_line, with the state a rerun would find."""
    rerun = "`dvc repro train@x`"
    assert ckpt_module.interrupted_line(rerun, kept=False) == (
        f"interrupted: nothing was saved (no --checkpoint or --resume); rerun {rerun} to start again")
    monkeypatch.setattr(Checkpoint, "latest", None)
    assert ckpt_module.interrupted_line(rerun, kept=True) == f"interrupted before the first epoch began; rerun {rerun}"
    run = Checkpoint(tmp_path / "ckpt", "fp")
    assert ckpt_module.interrupted_line(rerun, kept=True).startswith("interrupted before any epoch was saved")
    state = {"state": "epoch-3", "history": [{}] * 3, "wall_seconds": 1.0, "scheduler": None, "segments": []}
    (run.directory / "epoch-3").mkdir(parents=True)
    (run.directory / "run.json").write_text(json.dumps({"fingerprint": "other settings", **state}))
    assert ckpt_module.interrupted_line(rerun, kept=True).startswith("interrupted before any epoch was saved")
    (run.directory / "run.json").write_text(json.dumps({"fingerprint": "fp", **state}))
    assert ckpt_module.interrupted_line(rerun, kept=True) == (
        f"interrupted: epochs 1-3 are saved in {run.root}; rerun {rerun} to resume after epoch 3")
    # a folder inside `dvc exp run --temp`'s copy (a relative --checkpoint there) is deleted with it
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "project"))
    inside = Checkpoint(tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmp" / "abc" / "ckpt", "fp")
    (inside.directory / "epoch-3").mkdir(parents=True)
    (inside.directory / "run.json").write_text(json.dumps({"fingerprint": "fp", **state}))
    assert ckpt_module.interrupted_line(rerun, kept=True).endswith(
        "inside the temporary copy that `dvc exp run --temp` deletes, so a rerun starts over; --resume keeps "
        "them at the project root")


def test_the_rerun_named_is_the_command_that_was_interrupted(monkeypatch):
    for name in ("DVC_STAGE", "DVC_EXP_NAME"):
        monkeypatch.delenv(name, raising=False)
    assert cli.rerun_command() == "the same command"
    monkeypatch.setenv("DVC_STAGE", "train@lr_scheduler")
    assert cli.rerun_command() == "`dvc repro train@lr_scheduler`"
    monkeypatch.setenv("DVC_EXP_NAME", "tiny-pots")   # DVC sets it for every `dvc exp run`
    assert cli.rerun_command() == "the same `dvc exp run`"


@pytest.mark.slow
def test_ctrl_c_under_exp_run_temp_keeps_the_state_and_the_rerun_resumes(copy_finished_pipeline, tmp_path, env):
    """dvc.yaml's --resume keeps the state at the project root, outside the temporary copy that
    `dvc exp run --temp` deletes: the line promises a resume and the same command resumes. (In a
    copy of conftest's finished_pipeline, with longer runs set by -S.)"""
    root = copy_finished_pipeline()
    penv = project_env(root, env)
    longer = {"train.epochs": 3, "train.train_limit": 2048, "train.test_limit": 200, **QUICK}
    argv = [*DVC, "exp", "run", "--temp", f"train@{VARIANT}", *(f"-S{k}={v}" for k, v in longer.items())]
    log = tmp_path / "first.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(a) for a in argv], cwd=root, env=penv, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    manifests = lambda: list((root / "checkpoints").glob(f"{VARIANT}-seed1/*/node-0/run.json"))  # noqa: E731
    deadline = time.monotonic() + 600
    while not any("state" in json.loads(m.read_text() or "{}") for m in manifests()):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    text = log.read_text()
    [line] = [line for line in shown(text) if line.startswith("interrupted")]
    match = re.fullmatch(r"interrupted: epochs 1-(\d) are saved in (\S+); rerun the same `dvc exp run` to resume "
                         r"after epoch (\d)", line)
    assert match and match[1] == match[3], line
    folder = Path(match[2])
    assert folder.is_relative_to(root / "checkpoints") and (folder / "node-0" / "run.json").is_file()

    again = sh(argv, root, penv, timeout=600)
    assert f"{VARIANT}: resuming after epoch {match[1]} from {folder}" in again.stdout, again.stdout[-3000:]
    assert not folder.exists()  # finished: the run's own folder is removed


# --- what a run prints --------------------------------------------------------------------------


def test_the_closing_summary_is_a_few_aligned_lines_within_120_columns(repo_root):
    """The widest case: the longest variant name, five-digit counts, two sessions in two slots."""
    params = load_params(repo_root / "params.yaml")
    name = max(params.variants, key=len)
    metrics = {"variant": name, "seed": 110, "epochs": 15, "wall_seconds": 6012.3, "final_test_acc": 99.41,
               "best_test_acc": 99.45, "best_test_epoch": 13, "final_train_acc": 99.12, "best_train_acc": 99.2,
               "min_test_loss": 0.0183, "test_images": 10000, "evaluated_on": "holdout (last 10000 training images)",
               "num_processes": 16, "device": "cuda", "mixed_precision": "bf16",
               "segments": [{"threads": 1, "slot": "gpu:0,1,2,3,4,5,6,7"}, {"threads": 2, "slot": "gpu:8,9,10,11"}]}
    lines = summary_lines(metrics, "metrics/confirmation/runs/seed_110.json")
    assert 4 <= len(lines) <= 7 and all(len(line) <= WIDTH for line in lines), lines
    assert lines[0] == f"{name} seed 110: 15 epochs in 1 h 40 min (2 sessions)"
    assert "{" not in "".join(lines)
    body = lines[1:-1]  # aligned: each row's second and third columns start where the others' do
    for column in (r"(?<=  )(final|min|cuda)", r"(?<=  )(best|on|16)"):
        assert len({re.search(column, line).start() for line in body}) == 1, body
    assert "holdout accuracy" in lines[1] and "99.41%" in lines[1] and "(epoch 13)" in lines[1]
    assert lines[-1] == "  run file: metrics/confirmation/runs/seed_110.json"


def test_compare_prints_an_aligned_table_with_nothing_meaningless(tmp_path, run_stage, capsys):
    """On the repository's own runs (under_5k has no published value: its cells are blank)."""
    run_stage("compare", ["--params", REPO / "params.yaml", "--reference", REPO / "reference/published.json",
                          "--runs", REPO / "metrics/runs", "--published-path", REPO / "metrics/published_path",
                          "--out", tmp_path / "table"])
    out = capsys.readouterr().out
    assert "None" not in out and "null" not in out
    assert all(len(line) <= WIDTH for line in out.splitlines()), out
    lines = out.splitlines()
    assert lines[0].split() == ["variant", "n", "best", "test", "published", "verdict", "final", "test", "published",
                                "verdict", "data", "path"]
    for name in load_params(REPO / "params.yaml").variants:
        assert sum(line.startswith(f"{name} ") for line in lines) == 1, name
