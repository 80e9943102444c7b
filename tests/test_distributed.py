"""CPU processes (gloo) through `accelerate launch`, against one process with the same params:
two processes on one machine, two machines on localhost (one launcher each, a node-local
checkpoint each, killed and resumed), and global batches that split unevenly.

The processes split every global batch and the test set between them, so the optimisation
(batch, steps, schedule) and the counted images must be the same as on one process. GPUs are
hidden (cpu_env) so every test means the same on a host with 0, 1 or many GPUs.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from support.processes import (ONE_THREAD, Started, evaluate_saved, free_port, run_cmd, run_together,
                               run_until_checkpoint, train_cmd, without_timing)

from mnist_repro.core.config import load_params
from mnist_repro.core.data import load_split
from mnist_repro.core.models import build_model
from mnist_repro.training.device_data import global_batches, prepare_images
from mnist_repro.training.train import build_optimizer

pytestmark = pytest.mark.slow  # trains in subprocesses or runs stages/DVC

TRAIN_LIMIT, TEST_LIMIT, BATCH, EPOCHS = 512, 500, 32, 3
TWO_PROCESSES = {"launch.multi_gpu": True, "launch.num_processes": 2}


def finished(proc, out):
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(proc=proc, out=out, metrics=json.loads((out / "metrics.json").read_text()),
                history=json.loads((out / "history.json").read_text()))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("dist")


def two_params(quick_params, path, **kwargs):
    """(one-process, two-process) params files with the same train section; each launch section
    is the run's own, as check_launch demands of a metrics-writing run."""
    overrides = {**ONE_THREAD, **kwargs.pop("overrides", {})}
    one = quick_params(path.with_name(f"{path.stem}-1.yaml"), overrides=overrides, **kwargs)
    two = quick_params(path.with_name(f"{path.stem}-2.yaml"), overrides={**overrides, **TWO_PROCESSES}, **kwargs)
    assert load_params(one).train == load_params(two).train
    return one, two


@pytest.fixture(scope="module")
def params(base, quick_params):
    return two_params(quick_params, base / "params.yaml", epochs=EPOCHS, train_limit=TRAIN_LIMIT,
                      test_limit=TEST_LIMIT, overrides={"train.batch_size": BATCH})


@pytest.fixture(scope="module")
def one_proc(cpu_env, params, mnist_root, base):
    """The one-process run: the stage alone (`python stages/train.py`), the process a one-process
    launch would start, without the launcher's interpreter."""
    out = base / "one"
    return finished(run_cmd(train_cmd("lr_scheduler", params[0], mnist_root, out, launch=False), cpu_env), out)


@pytest.fixture(scope="module")
def two_proc(cpu_env, params, mnist_root, base):
    out = base / "two"
    return finished(run_cmd(train_cmd("lr_scheduler", params[1], mnist_root, out), cpu_env), out)


def test_two_processes_count_every_image_once(two_proc):
    m = two_proc["metrics"]
    assert m["num_processes"] == 2 and m["num_machines"] == 1 and m["device"] == "cpu"
    assert m["train_images"] == TRAIN_LIMIT and m["test_images"] == TEST_LIMIT
    for h in two_proc["history"]:
        assert h["train_images"] == TRAIN_LIMIT and h["test_images"] == TEST_LIMIT


def test_two_processes_write_and_print_one_summary(two_proc):
    stdout = two_proc["proc"].stdout
    assert stdout.count(f"lr_scheduler seed 1: {EPOCHS} epochs in ") == 1  # the closing summary, once
    assert stdout.count("2 processes x 1 thread") == 1  # its "ran on" line
    assert stdout.count(f"lr_scheduler epoch {EPOCHS}/{EPOCHS}:") == 1
    assert sorted(p.name for p in two_proc["out"].iterdir()) == ["history.json", "metrics.json", "model.pt"]


BATCHNORM_WARNING = "warning: train.sync_batchnorm is ignored on cpu"


def test_the_sync_batchnorm_warning_is_for_models_with_batchnorm(two_proc, shares):
    """lr_scheduler has BatchNorm: two CPU processes cannot share its statistics, and say so
    once; skeleton has none, so there is nothing to warn about."""
    assert two_proc["proc"].stdout.count(BATCHNORM_WARNING) == 1
    assert two_proc["metrics"]["sync_batchnorm"] is False
    assert BATCHNORM_WARNING not in shares[2]["proc"].stdout + shares[2]["proc"].stderr


def test_two_processes_follow_the_one_process_optimisation(one_proc, two_proc):
    one, two = one_proc["metrics"], two_proc["metrics"]
    assert one["num_processes"] == 1
    assert two["optimizer_steps"] == one["optimizer_steps"] == EPOCHS * math.ceil(TRAIN_LIMIT / BATCH)
    assert [h["steps"] for h in two_proc["history"]] == [h["steps"] for h in one_proc["history"]]
    # the OneCycleLR trajectory is stepped once per global step, not once per process
    assert [h["lr"] for h in two_proc["history"]] == pytest.approx([h["lr"] for h in one_proc["history"]],
                                                                   rel=1e-12)
    assert one["test_images"] == two["test_images"] == TEST_LIMIT


def test_two_processes_reach_a_comparable_accuracy(one_proc, two_proc):
    """Not equal by construction: on CPU each process normalises BatchNorm over its half of
    the batch (SyncBatchNorm is CUDA-only) and draws its own augmentation and dropout. At
    512 images x 3 epochs the seed-to-seed spread of one process is itself ~+-9 points
    (measured: 47.0 / 56.0 / 64.4 for seeds 1-3), so the bound is loose; it still tells a
    learning two-process run from a broken one, which would sit at chance (~10%)."""
    one, two = one_proc["metrics"]["best_test_acc"], two_proc["metrics"]["best_test_acc"]
    assert one > 25 and two > 25
    assert abs(one - two) < 15


def test_reported_test_metrics_are_those_of_the_saved_model_with_batchnorm(two_proc, params, mnist_root):
    saved = evaluate_saved(two_proc["out"] / "model.pt", "lr_scheduler", params[1], mnist_root)
    last = two_proc["history"][-1]
    assert last["test_loss"] == pytest.approx(saved["loss"], rel=1e-5)
    assert round(last["test_acc"] * TEST_LIMIT / 100) == saved["correct"]


# --- uneven shares: each process's loss is its share's sum x N / (global batch) ---------------

SHARES_TRAIN, SHARES_TEST, SHARES_EPOCHS = 131, 333, 2  # batches of 128 and 3: shares 64/64, then 2/1


@pytest.fixture(scope="module")
def shares(cpu_env, mnist_root, base, quick_params):
    """skeleton (no BatchNorm, dropout or augmentation) on 131 training images in batches of 128,
    so the second global batch splits 2/1 over two processes, and 333 test images (shards of 167
    and 166), launched with one and with two processes. Nothing random differs between the
    processes, so both runs are the same computation up to float rounding."""
    runs = {}
    for n, params in zip((1, 2), two_params(quick_params, base / "shares.yaml", epochs=SHARES_EPOCHS,
                                            train_limit=SHARES_TRAIN, test_limit=SHARES_TEST, overrides={
                                                "train.batch_size": 128, "variants.skeleton.lr": 0.05})):
        out = base / f"shares-{n}"  # one process: the stage alone, as one_proc
        runs[n] = dict(finished(run_cmd(train_cmd("skeleton", params, mnist_root, out, launch=n > 1), cpu_env), out),
                       params=params, weights=torch.load(out / "model.pt", weights_only=True))
    return runs


def test_uneven_shares_give_the_one_process_weights_and_metrics(shares):
    one, two = shares[1], shares[2]
    assert (one["metrics"]["num_processes"], two["metrics"]["num_processes"]) == (1, 2)
    assert one["metrics"]["optimizer_steps"] == two["metrics"]["optimizer_steps"] == 2 * SHARES_EPOCHS
    assert two["weights"].keys() == one["weights"].keys()
    for name, weight in one["weights"].items():
        assert torch.allclose(two["weights"][name], weight, rtol=1e-5, atol=1e-6), name
    # training moved the weights far beyond that tolerance, so the comparison means something
    assert max_difference(one["weights"], initial_weights("skeleton")) > 100 * 1e-6
    for h1, h2 in zip(one["history"], two["history"], strict=True):
        assert (h2["train_images"], h2["test_images"]) == (SHARES_TRAIN, SHARES_TEST)
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-5)
        assert h2["test_loss"] == pytest.approx(h1["test_loss"], rel=1e-5)
        assert (h2["train_acc"], h2["test_acc"]) == (h1["train_acc"], h1["test_acc"])


def initial_weights(model: str) -> dict:
    set_seed(1)  # as run_training does before building the model
    return build_model(model).state_dict()


def max_difference(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_a_mean_of_per_process_means_would_be_caught(shares, mnist_root):
    """The control: the same two epochs in this process with each process's loss a plain mean
    over its share (DDP then averages the two means, so the 2 / 1 split weighs the lone image
    double) end further from the two-process weights than the tolerance above allows."""
    params = load_params(shares[2]["params"])
    cfg, variant = params.train, params.variant("skeleton")
    images, labels = load_split(mnist_root, train=True, limit=SHARES_TRAIN)
    set_seed(1)
    model = build_model(variant.model)
    optimizer = build_optimizer(model, variant)
    for epoch in range(1, SHARES_EPOCHS + 1):
        for batch in global_batches(SHARES_TRAIN, cfg.batch_size, cfg.seed, epoch):
            optimizer.zero_grad()
            for share in batch.tensor_split(2):
                out = model(prepare_images(images[share], cfg, augment=False))
                (F.nll_loss(out, labels[share]) / 2).backward()
            optimizer.step()
    assert max_difference(model.state_dict(), shares[2]["weights"]) > 10 * 1e-6


def test_uneven_test_shards_count_every_image_exactly_once(shares, mnist_root):
    two = shares[2]
    m, last = two["metrics"], two["history"][-1]
    assert m["num_processes"] == 2 and m["test_images"] == SHARES_TEST
    saved = evaluate_saved(two["out"] / "model.pt", "skeleton", two["params"], mnist_root)
    # the sums reduced over the two shards equal one pass over all 333 images
    assert last["test_loss"] == pytest.approx(saved["loss"], rel=1e-5)
    assert last["test_acc"] == pytest.approx(100 * saved["correct"] / SHARES_TEST, abs=1e-9)


def test_a_global_batch_smaller_than_the_processes_is_refused_up_front(cpu_env, mnist_root, base, quick_params):
    """129 images in batches of 128 end on a batch of 1: one of two processes would get nothing."""
    params = quick_params(base / "129.yaml", epochs=1, train_limit=129, test_limit=100,
                          overrides={**ONE_THREAD, **TWO_PROCESSES, "train.batch_size": 128})
    out = base / "129"
    proc = run_cmd(train_cmd("skeleton", params, mnist_root, out, checkpoint=out / "ckpt"), cpu_env)
    assert proc.returncode == 1
    # One line from global rank 0 (the other process exits 1 silently), and no launcher's traceback.
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        "error: train: an epoch of 129 images in batches of 128 ends on a batch of 1, fewer images than "
        "the 2 processes, so a process would get none; change train.train_limit (or train.holdout) or "
        "launch fewer processes"]
    assert "epoch 1" not in proc.stdout  # no training step, no evaluation
    assert not out.exists()  # no outputs, no checkpoint



def test_a_diverged_two_process_run_says_so_once(cpu_env, mnist_root, base, quick_params):
    """Both processes stop at the same epoch (the first non-finite step any of them saw) and
    rank 0 alone says so: no process left waiting in a collective, no second line."""
    params = quick_params(base / "diverge.yaml", epochs=2, train_limit=512, test_limit=100, overrides={
        **ONE_THREAD, **TWO_PROCESSES, "train.batch_size": 128, "variants.skeleton.lr": 1e6})
    out = base / "diverge"
    proc = run_cmd(train_cmd("skeleton", params, mnist_root, out), cpu_env)
    assert proc.returncode == 1
    [line] = [line for line in proc.stderr.splitlines() if line.strip()]
    assert line.startswith("error: skeleton: loss became NaN or infinite at epoch 1, step ")
    assert not out.exists()


def test_ctrl_c_of_two_processes_is_one_line_and_exit_130(cpu_env, mnist_root, base, quick_params):
    """torch's launcher takes the Ctrl-C and forwards it to both processes: rank 0 says which
    epochs are saved, rank 1 nothing, and neither launcher nor process adds a traceback."""
    _, two = two_params(quick_params, base / "ctrl-c.yaml", epochs=15, train_limit=TRAIN_LIMIT,
                        test_limit=TEST_LIMIT, overrides={"train.batch_size": BATCH})
    out = base / "ctrl-c"
    ckpt = out / "ckpt"
    run = Started(train_cmd("lr_scheduler", two, mnist_root, out, checkpoint=ckpt), cpu_env, out / "run")
    deadline = time.monotonic() + 240
    while not (ckpt / "node-0" / "run.json").exists():
        assert run.returncode is None and time.monotonic() < deadline, run.stderr[-3000:]
        time.sleep(0.01)
    os.killpg(run.proc.pid, signal.SIGINT)  # what Ctrl-C does to a terminal's job
    assert run.proc.wait(timeout=120) == 130
    done = len(json.loads((ckpt / "node-0" / "run.json").read_text())["history"])
    assert [line for line in run.stderr.splitlines() if line.strip()] == [
        f"interrupted: epochs 1-{done} are saved in {ckpt}; rerun the same command to resume after epoch {done}"]
    assert "Traceback" not in run.stdout and not (out / "metrics.json").exists()


# --- two machines on localhost: one launcher per node, each with its own checkpoint directory ---

NODES_TRAIN, NODES_TEST, NODES_BATCH, NODES_EPOCHS = 512, 200, 64, 3


@pytest.fixture(scope="module")
def nodes_params(base, quick_params):
    """Two machines of one process each; the port in params is a placeholder that every job
    overrides with a free one (dvc.yaml passes params' fixed port)."""
    return quick_params(base / "nodes.yaml", epochs=NODES_EPOCHS, train_limit=NODES_TRAIN,
                        test_limit=NODES_TEST, overrides={
                            **ONE_THREAD, **TWO_PROCESSES, "train.batch_size": NODES_BATCH,
                            "launch.num_machines": 2, "launch.main_process_port": 29500})


def two_nodes(params, data, job, disks):
    """The two launchers of one two-machine job: node k writes its outputs into job/node<k> and its
    resume state under disks[k] (its own disk), and rendezvouses at 127.0.0.1 on a free port."""
    port = free_port()
    return [train_cmd("lr_scheduler", params, data, job / f"node{rank}", checkpoint=disks[rank], machine_rank=rank,
                      launch_extra=["--main_process_ip", "127.0.0.1", "--main_process_port", port])
            for rank in (0, 1)]


def outputs(job) -> list[dict]:
    return [dict(metrics=json.loads((job / f"node{rank}" / "metrics.json").read_text()),
                 history=json.loads((job / f"node{rank}" / "history.json").read_text())) for rank in (0, 1)]


def all_succeeded(runs):
    for rank, run in enumerate(runs):
        assert run.returncode == 0, f"node {rank}:\n{run.stderr[-4000:]}"


@pytest.fixture(scope="module")
def nodes_uninterrupted(base, nodes_params, mnist_root, cpu_env):
    job = base / "nodes-full"
    disks = [job / "disk0", job / "disk1"]
    runs = run_together(two_nodes(nodes_params, mnist_root, job, disks), cpu_env, job / "logs")
    all_succeeded(runs)
    return dict(job=job, disks=disks, runs=runs, outputs=outputs(job))


def test_two_machines_write_one_summary_per_node_counting_every_image_once(nodes_uninterrupted):
    node0, node1 = nodes_uninterrupted["outputs"]
    for node in (node0, node1):
        m = node["metrics"]
        assert (m["num_processes"], m["num_machines"], m["device"]) == (2, 2, "cpu")
        assert m["train_images"] == NODES_TRAIN and m["test_images"] == NODES_TEST
        assert m["epochs"] == NODES_EPOCHS and m["optimizer_steps"] == NODES_EPOCHS * NODES_TRAIN // NODES_BATCH
        assert all(h["test_images"] == NODES_TEST for h in node["history"])
    assert without_timing(node0["metrics"]) == without_timing(node1["metrics"])
    assert without_timing(node0["history"]) == without_timing(node1["history"])
    # each node printed its own progress: its local main process
    for run in nodes_uninterrupted["runs"]:
        assert run.stdout.count(f"lr_scheduler epoch {NODES_EPOCHS}/{NODES_EPOCHS}:") == 1


def test_each_machine_keeps_only_its_own_checkpoint(nodes_uninterrupted):
    for rank, disk in enumerate(nodes_uninterrupted["disks"]):
        assert [p.name for p in disk.iterdir()] == [f"node-{rank}"]
        assert json.loads((disk / f"node-{rank}" / "run.json").read_text())["finished"] is True


@pytest.fixture(scope="module")
def nodes_killed(base, nodes_params, mnist_root, cpu_env):
    """Both launchers (and their workers) SIGKILLed once each node has saved epoch 2; a copy of
    both disks is kept for the lost-state and one-epoch-apart tests."""
    job = base / "nodes-killed"
    disks = [job / "disk0", job / "disk1"]
    manifests = [disks[rank] / f"node-{rank}" / "run.json" for rank in (0, 1)]
    runs, saved = run_until_checkpoint(two_nodes(nodes_params, mnist_root, job, disks), cpu_env, job / "logs",
                                       manifests, epoch=2)
    for disk in disks:
        shutil.copytree(disk, job / "copy" / disk.name)
    return dict(job=job, disks=disks, saved=saved, runs=runs)


def test_killed_machines_each_keep_their_two_newest_epochs(nodes_killed):
    assert [s["state"] for s in nodes_killed["saved"]] == ["epoch-2", "epoch-2"]
    assert [len(s["history"]) for s in nodes_killed["saved"]] == [2, 2]
    assert [s["previous"]["state"] for s in nodes_killed["saved"]] == ["epoch-1", "epoch-1"]
    for rank, disk in enumerate(nodes_killed["disks"]):
        assert {p.name for p in (disk / f"node-{rank}").iterdir()} == {"epoch-1", "epoch-2", "run.json"}
    for rank, run in enumerate(nodes_killed["runs"]):
        assert f"lr_scheduler seed 1: {NODES_EPOCHS} epochs in" not in run.stdout  # killed before the summary
        assert not (nodes_killed["job"] / f"node{rank}" / "metrics.json").exists()


def test_both_machines_resume_from_the_same_epoch_and_finish_as_uninterrupted(
        nodes_killed, nodes_uninterrupted, nodes_params, mnist_root, cpu_env):
    job = nodes_killed["job"]
    runs = run_together(two_nodes(nodes_params, mnist_root, job, nodes_killed["disks"]), cpu_env, job / "logs-resume")
    all_succeeded(runs)
    for run in runs:
        assert "lr_scheduler: resuming after epoch 2 from" in run.stdout
        assert "lr_scheduler epoch 2/" not in run.stdout and f"lr_scheduler epoch {NODES_EPOCHS}/" in run.stdout
    for resumed, full in zip(outputs(job), nodes_uninterrupted["outputs"]):
        assert without_timing(resumed["metrics"]) == without_timing(full["metrics"])
        assert without_timing(resumed["history"]) == without_timing(full["history"])


def test_a_machine_without_the_state_makes_all_start_over_together(
        nodes_killed, nodes_uninterrupted, nodes_params, mnist_root, cpu_env):
    """Node 1 lost its disk: node 0 holds epochs 1 and 2 but cannot resume alone (the collectives
    would hang), so every node starts over, and the run is the uninterrupted one."""
    job = nodes_killed["job"] / "lost"
    disks = [job / "disk0", job / "disk1"]
    shutil.copytree(nodes_killed["job"] / "copy" / "disk0", disks[0])
    assert not disks[1].exists()
    runs = run_together(two_nodes(nodes_params, mnist_root, job, disks), cpu_env, job / "logs", timeout=240)
    all_succeeded(runs)
    assert f"a node lacks the state of epoch 2 in {disks[0]}/node-*: starting over on every node" in runs[0].stdout
    for run in runs:
        assert "resuming" not in run.stdout and "lr_scheduler epoch 1/" in run.stdout
    for restarted, full in zip(outputs(job), nodes_uninterrupted["outputs"]):
        assert without_timing(restarted["metrics"]) == without_timing(full["metrics"])
        assert without_timing(restarted["history"]) == without_timing(full["history"])


def test_machines_one_manifest_apart_resume_from_the_epoch_both_hold(
        nodes_killed, nodes_uninterrupted, nodes_params, mnist_root, cpu_env):
    """Killed between the two nodes' manifest writes of epoch 2: node 0's names epoch 2 (and 1),
    node 1's still names epoch 1 (its epoch-2 state saved, not yet recorded). Both resume from
    epoch 1, the newest both hold, and finish as the uninterrupted run."""
    job = nodes_killed["job"] / "apart"
    disks = [job / "disk0", job / "disk1"]
    for disk in disks:
        shutil.copytree(nodes_killed["job"] / "copy" / disk.name, disk)
    manifest = disks[1] / "node-1" / "run.json"
    saved = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({"fingerprint": saved["fingerprint"], **saved["previous"], "previous": None}))
    runs = run_together(two_nodes(nodes_params, mnist_root, job, disks), cpu_env, job / "logs")
    all_succeeded(runs)
    assert (f"a node lacks the state of epoch 2 in {disks[0]}/node-*: resuming from epoch 1, the newest every node holds"
            in runs[0].stdout)
    for run in runs:
        assert "lr_scheduler: resuming after epoch 1 from" in run.stdout
        assert "lr_scheduler epoch 1/" not in run.stdout and "lr_scheduler epoch 2/" in run.stdout
    for resumed, full in zip(outputs(job), nodes_uninterrupted["outputs"]):
        assert without_timing(resumed["metrics"]) == without_timing(full["metrics"])
        assert without_timing(resumed["history"]) == without_timing(full["history"])
