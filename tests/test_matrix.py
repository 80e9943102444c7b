"""The run matrix (mnist_repro.matrix, mnist_repro.slots): slots split the host without overlap,
pinned runs see only their slot, a killed run loses only itself, and the pipeline run k at a time
ends exactly as a serial `dvc repro`: every stage in dvc.lock, the same weights and numbers.

Two kinds of project, each a throw-away git + DVC copy under pytest's tmp dir: a tiny one whose
stages record what they see (their CPU affinity, CUDA_VISIBLE_DEVICES, MNIST_REPRO_SLOT and when
they ran), and the real pipeline on a slice with two variants."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import DVC, git_commit, git_init, init_project, project_env, repo_variants, sh, without_timing

from mnist_repro.slots import Slot, SlotError, SlotPool, core_ranges, host_slots

MATRIX = (sys.executable, "-m", "mnist_repro.matrix")


# --- slots ----------------------------------------------------------------------------------

def test_cpu_slots_are_disjoint_core_sets_of_the_asked_width():
    slots = host_slots(1, gpus=(), cores=tuple(range(8)), cores_per_slot=3)
    assert [s.label for s in slots] == ["cpu:0-2", "cpu:3-5"]   # cores 6-7 would make a narrower slot
    assert [s.cores for s in slots] == [(0, 1, 2), (3, 4, 5)] and all(s.gpus == () for s in slots)
    assert [s.label for s in host_slots(2, gpus=(), cores=(0, 1, 4, 5))] == ["cpu:0-1", "cpu:4-5"]
    assert core_ranges((7, 0, 1, 2, 5)) == "0-2,5,7"


def test_gpu_slots_hold_launch_width_gpus_and_a_share_of_the_cores():
    one = host_slots(1, gpus=("0", "1"), cores=(0, 1, 2, 3))
    assert [(s.label, s.gpus, s.cores) for s in one] == [("gpu:0", ("0",), (0, 1)), ("gpu:1", ("1",), (2, 3))]
    two = host_slots(2, gpus=("4", "5", "6", "7"), cores=(0, 1))
    assert [(s.label, s.gpus, s.cores) for s in two] == [("gpu:4,5", ("4", "5"), (0,)), ("gpu:6,7", ("6", "7"), (1,))]
    env = two[1].env({"PATH": "/bin", "CUDA_VISIBLE_DEVICES": ""})
    assert (env["CUDA_VISIBLE_DEVICES"], env["MNIST_REPRO_SLOT"], env["OMP_NUM_THREADS"]) == ("6,7", "gpu:6,7", "1")


@pytest.mark.parametrize("width,gpus,per,said", [
    (2, ("0",), None, "launch.num_processes is 2 but this host shows 1 GPU(s)"),
    (2, (), 1, "--cores-per-slot 1 is fewer than launch.num_processes (2)"),
    (1, (), 5, "--cores-per-slot 5 is more than the 2 cores"),
])
def test_a_host_that_cannot_hold_one_run_is_refused_with_the_fix(width, gpus, per, said):
    with pytest.raises(SlotError, match=said.replace("(", r"\(").replace(")", r"\)")):
        host_slots(width, gpus=gpus, cores=(0, 1), cores_per_slot=per)


def test_two_pools_never_hand_out_one_slot_and_a_killed_holder_frees_it(tmp_path):
    slots = [Slot("cpu:0", (0,), ()), Slot("cpu:1", (1,), ())]
    mine = SlotPool(slots, tmp_path)
    # Another process (a second matrix command) holds cpu:0 ...
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from mnist_repro.slots import Slot, SlotPool; "
        f"p = SlotPool([Slot('cpu:0', (0,), ())], {str(tmp_path)!r}); print(p.take().label, flush=True); "
        "time.sleep(600)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "cpu:0"
        assert mine.take().label == "cpu:1"
        assert mine.take() is None                       # cpu:0 is the other process's
        holder.send_signal(signal.SIGKILL)               # ... until it dies: the kernel drops its flock
        holder.wait(timeout=30)
        assert mine.take().label == "cpu:0"
        assert mine.busy == 2
        mine.give_back(slots[1])
        assert mine.take().label == "cpu:1"
    finally:
        holder.kill()


def test_a_slurm_task_records_its_job_node_and_devices(monkeypatch):
    from mnist_repro.matrix import task_slot_label

    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "777")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    monkeypatch.setenv("SLURMD_NODENAME", "node12")
    monkeypatch.setenv("MNIST_REPRO_GPUS", "0")   # as Slurm's CUDA_VISIBLE_DEVICES for a 1-GPU task
    assert task_slot_label() == "slurm:777_4@node12/gpu:0"
    monkeypatch.setenv("MNIST_REPRO_GPUS", "")
    assert task_slot_label() == f"slurm:777_4@node12/cpu:{core_ranges(os.sched_getaffinity(0))}"


def test_a_task_outside_its_stage_list_is_refused_with_the_fix(tmp_path, capsys):
    from mnist_repro import cli
    from mnist_repro.matrix import main

    (tmp_path / "stages.txt").write_text("train@a\ntrain@b\n")
    with pytest.raises(SystemExit):
        cli.run(main, ["task", "--stages", str(tmp_path / "stages.txt"), "--index", "2"])
    assert capsys.readouterr().err == (f"error: --index 2: {tmp_path}/stages.txt lists 2 stages (0..1); "
                                       "submit the array as --array=0-1\n")
    with pytest.raises(SystemExit):
        cli.run(main, ["gather", "--stages", str(tmp_path / "none.txt")])
    assert capsys.readouterr().err == (f"error: {tmp_path}/none.txt: no stage list; write it with "
                                       f"`python -m mnist_repro.matrix prepare --out {tmp_path}/none.txt`\n")


# --- a tiny DVC project whose stages record what they see ---------------------------------------

SEES = ("import json, os, sys, time; start = time.time(); time.sleep(float(sys.argv[2])); "
        "json.dump(dict(cores=sorted(os.sched_getaffinity(0)), gpus=os.environ.get('CUDA_VISIBLE_DEVICES'), "
        "slot=os.environ.get('MNIST_REPRO_SLOT'), start=start, end=time.time()), open(sys.argv[1], 'w'))")


def tiny_project(root: Path, env: dict, sleeps: dict, benchmark: bool = False) -> Path:
    """up -> t@<name> (each sleeps, then records what it saw in seen/<name>.json) -> gather; with
    benchmark, also up -> benchmark (a timing stage, which the matrix runs alone) -> gather."""
    root.mkdir(parents=True)
    (root / "sees.py").write_text(SEES)
    (root / "params.yaml").write_text((Path(__file__).parents[1] / "params.yaml").read_text())  # launch: 1 process
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "up": {"cmd": "echo up > up.txt", "outs": ["up.txt"]},
        "t": {"foreach": sleeps, "do": {"cmd": "python sees.py seen/${key}.json ${item}",
                                        "deps": ["up.txt", "sees.py"],
                                        "outs": [{"seen/${key}.json": {"cache": False}}]}},
        **({"benchmark": {"cmd": "python sees.py seen/benchmark.json 1", "deps": ["up.txt", "sees.py"],
                          "outs": [{"seen/benchmark.json": {"cache": False}}]}} if benchmark else {}),
        "gather": {"cmd": "cat seen/*.json > all.txt", "deps": ["seen"], "outs": ["all.txt"]}}}))
    (root / "seen").mkdir()
    git_init(root, env)
    sh([*DVC, "init", "-q"], root, env)
    git_commit(root, env, "tiny project")
    return root


@pytest.fixture
def tiny_env(cli_env):
    env = {k: v for k, v in cli_env.items() if k not in ("MNIST_REPRO_GPUS", "CUDA_VISIBLE_DEVICES")}
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1] / "src"),
                                                               os.environ.get("PYTHONPATH")]))}


def seen(root: Path) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted((root / "seen").glob("*.json"))}


def overlapping(runs: dict) -> list[tuple[str, str]]:
    names = sorted(runs)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
            if runs[a]["start"] < runs[b]["end"] and runs[b]["start"] < runs[a]["end"]]


def cmdline(process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:    # ended (or a zombie the runner has not reaped yet)
        return []


def assert_clean_and_locked(root: Path, env: dict) -> None:
    assert sh([*DVC, "status"], root, env).stdout.strip() == "Data and pipelines are up to date."
    listed = {line.split()[0] for line in sh([*DVC, "stage", "list"], root, env).stdout.splitlines()}
    assert set(yaml.safe_load((root / "dvc.lock").read_text())["stages"]) == listed


@pytest.mark.slow
def test_two_pinned_jobs_on_this_host_use_disjoint_cores_and_record_their_slots(tmp_path, tiny_env):
    root = tiny_project(tmp_path / "tiny", tiny_env, {"a": 6, "b": 6, "c": 0}, benchmark=True)
    env = {**tiny_env, "MNIST_REPRO_GPUS": ""}
    proc = sh([*MATRIX, "run", "--jobs", "2", "--cores-per-slot", "1", "--lock-dir", tmp_path / "locks"], root, env)
    runs = seen(root)
    assert set(runs) == {"a", "b", "c", "benchmark"}
    alone = runs.pop("benchmark")                        # a timing stage: both cores, nothing beside it
    assert (alone["slot"], alone["cores"]) == ("cpu:0-1", [0, 1])
    assert all("benchmark" not in pair for pair in overlapping({**runs, "benchmark": alone}))
    for run in runs.values():
        assert run["slot"] in ("cpu:0", "cpu:1") and run["cores"] == [int(run["slot"][4:])] and run["gpus"] == ""
    assert overlapping(runs), f"no two runs overlapped:\n{proc.stdout}"
    for a, b in overlapping(runs):                       # at the same time: never on the same core
        assert not set(runs[a]["cores"]) & set(runs[b]["cores"]), (a, b, runs)
    assert_clean_and_locked(root, tiny_env)


@pytest.mark.slow
def test_a_simulated_two_gpu_host_gives_each_run_its_own_device(tmp_path, tiny_env):
    root = tiny_project(tmp_path / "tiny", tiny_env, {"a": 6, "b": 6})
    env = {**tiny_env, "MNIST_REPRO_GPUS": "0,1"}
    dry = sh([*MATRIX, "run", "--dry", "--lock-dir", tmp_path / "locks"], root, env).stdout
    assert "4 stage(s) to run, 2 at a time in gpu:0, gpu:1" in dry
    sh([*MATRIX, "run", "--lock-dir", tmp_path / "locks"], root, env)
    runs = seen(root)
    assert overlapping(runs) == [("a", "b")]
    assert sorted((r["gpus"], r["slot"]) for r in runs.values()) == [("0", "gpu:0"), ("1", "gpu:1")]
    assert runs["a"]["cores"] != runs["b"]["cores"]      # one core each of the two
    assert_clean_and_locked(root, tiny_env)


@pytest.mark.slow
def test_a_killed_run_loses_only_itself_frees_its_slot_and_reruns(tmp_path, tiny_env):
    root = tiny_project(tmp_path / "tiny", tiny_env, {"a": 60, "b": 30, "c": 1})
    env = {**tiny_env, "MNIST_REPRO_GPUS": ""}
    cmd = [str(c) for c in (*MATRIX, "run", "--cores-per-slot", "1", "--lock-dir", tmp_path / "locks")]
    runner = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    victim = None
    while victim is None and time.monotonic() < deadline:
        for child in psutil.Process(runner.pid).children():
            if "t@a" in cmdline(child):
                victim = child
        time.sleep(0.2)
    assert victim is not None, "t@a never started"
    while not any("sees.py" in " ".join(cmdline(p)) for p in victim.children(recursive=True)):
        time.sleep(0.2)                                  # its command runs: DVC has let go of the repo lock
    for p in [victim, *victim.children(recursive=True)]:
        p.kill()
    out, err = runner.communicate(timeout=180)
    assert runner.returncode == 1
    assert err.strip().splitlines()[-1].startswith(
        "error: 2 stage(s) not done: t@a (exit -9, log "), err
    assert "gather (not started: an upstream stage failed)" in err
    assert set(seen(root)) == {"b", "c"}                 # the others finished ...
    assert "start  t@c in cpu:0" in out, out             # ... one of them in the killed run's slot
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert {"t@b", "t@c"} <= set(lock) and "t@a" not in lock

    (root / "dvc.yaml").write_text((root / "dvc.yaml").read_text().replace("a: 60", "a: 1"))
    again = sh(cmd, root, env)                           # the same command: only what is left
    assert [line.split()[1] for line in again.stdout.splitlines() if line.startswith("start")] == ["t@a", "gather"]
    assert_clean_and_locked(root, tiny_env)


# --- the real pipeline on a slice: the matrix against a serial `dvc repro` -------------------------

def matrix_params() -> dict:
    """Overrides for write_quick_params: two variants (under_5k, which the committed design search
    and the confirmation need, and skeleton), no extra seeds (slow group included), precision,
    published-path or confirmation runs; one torch thread per run, so a run's numbers do not
    depend on how many cores it was given."""
    return {"overrides": {"variants": repo_variants(("skeleton", "under_5k")),
                          "seeds.variants": [], "seeds.extra": [], "seeds.slow": {"variants": [], "extra": []},
                          "confirmation.seeds": [], "precision.variant": "skeleton",
                          "precision.seeds": [], "published_path.variants": [], "benchmark.variant": "skeleton",
                          "benchmark.repeats": 1, "train.cpu_threads": 1}}


# compare and report read these folders; with no published-path, confirmation or precision stage
# nothing writes them.
EMPTY_INPUTS = ("metrics/published_path", "metrics/confirmation", "metrics/precision")
TRAINING = ("train@skeleton", "train@under_5k")


def make_matrix_project(root: Path, env: dict) -> Path:
    init_project(root, env, params=matrix_params())
    for folder in EMPTY_INPUTS:
        (root / folder).mkdir(parents=True)
    return root


def lock_entry(root: Path, stage: str) -> dict:
    """A stage's dvc.lock entry but its outputs (run files and checkpoints hold wall times, and
    torch.save names the archive after the temporary file the weights are written to)."""
    return {k: v for k, v in yaml.safe_load((root / "dvc.lock").read_text())["stages"][stage].items() if k != "outs"}


def weights(root: Path, stage: str) -> dict:
    import torch

    return torch.load(root / "models" / f"{stage.split('@')[1]}.pt", weights_only=True)


def run_files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): without_timing(json.loads(p.read_text()))
            for folder in ("metrics/runs", "metrics/history") for p in sorted((root / folder).rglob("*.json"))}


@pytest.mark.slow
def test_the_pipeline_two_at_a_time_ends_as_a_serial_repro(tmp_path, cpu_env):
    parallel = tmp_path / "parallel"
    env = project_env(parallel, cpu_env)
    make_matrix_project(parallel, env)
    proc = sh([*MATRIX, "run", "--cores-per-slot", "1", "--lock-dir", tmp_path / "locks"], parallel, env,
              timeout=1200)
    starts = [line.split()[1:4:2] for line in proc.stdout.splitlines() if line.startswith("start")]
    assert {stage for stage, _ in starts} == {"check_params", "download", *TRAINING, "benchmark", "compare",
                                              "report"}
    assert {slot for stage, slot in starts if stage in TRAINING} == {"cpu:0", "cpu:1"}
    events = [line.split()[:2] for line in proc.stdout.splitlines() if line.split()[1:2] in ([t] for t in TRAINING)]
    assert [e[0] for e in events[:2]] == ["start", "start"], proc.stdout   # both trained at once
    assert_clean_and_locked(parallel, env)

    # The same training stages alone, one after another, on one core (taskset), as `dvc repro` runs them.
    serial = tmp_path / "serial"
    senv = project_env(serial, cpu_env)
    make_matrix_project(serial, senv)
    sh(["taskset", "-c", "0", *DVC, "repro", *TRAINING], serial, senv, timeout=1200)
    for stage in TRAINING:
        assert lock_entry(parallel, stage) == lock_entry(serial, stage)   # same command, deps and params
        mine, alone = weights(parallel, stage), weights(serial, stage)
        assert mine.keys() == alone.keys() and all(mine[k].equal(alone[k]) for k in mine)   # bit for bit
    mine, alone = run_files(parallel), run_files(serial)
    slot_of = dict(starts)
    for rel, run in mine.items():   # a summary records the slot its run was pinned to; a dvc repro, none
        if rel.startswith("metrics/runs/"):
            assert (run.pop("slot"), alone[rel].pop("slot")) == (slot_of[f"train@{run['variant']}"], None), rel
    assert mine == alone                                                   # timing and slot aside
    assert len(mine) == 2 * len(TRAINING)


# --- what the design relies on in DVC itself (3.67) ------------------------------------------------

@pytest.mark.slow
def test_dvc_restores_a_stage_from_its_run_cache_only_without_persist_outputs(tmp_path, tiny_env):
    """Why the experiment queue cannot fill the workspace: its results could come back only through
    the run-cache, and DVC keeps none for a stage with a persist output (every training stage's
    checkpoints)."""
    root = tmp_path / "cache"
    root.mkdir()

    def stage(persist: bool) -> dict:
        return {"cmd": "cp in.txt out_${item}.txt && mkdir -p ck_${item}", "deps": ["in.txt"],
                "outs": ["out_${item}.txt", {"ck_${item}": {"persist": persist}}]}

    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "plain": {"foreach": ["p"], "do": stage(False)}, "resumable": {"foreach": ["r"], "do": stage(True)}}}))
    (root / "in.txt").write_text("1\n")
    git_init(root, tiny_env)
    sh([*DVC, "init", "-q"], root, tiny_env)
    for value in ("1", "2"):
        (root / "in.txt").write_text(f"{value}\n")
        sh([*DVC, "repro"], root, tiny_env)
    (root / "in.txt").write_text("1\n")                  # back to a state both stages ran in
    out = sh([*DVC, "repro"], root, tiny_env).stdout
    assert "Stage 'plain@p' is cached - skipping run, checking out outputs" in out
    assert "Running stage 'resumable@r'" in out


@pytest.mark.slow
def test_a_killed_dvc_leaves_its_lock_entry_which_the_next_run_removes(tmp_path, tiny_env):
    root = tiny_project(tmp_path / "tiny", tiny_env, {"a": 60})
    sh([*DVC, "repro", "up"], root, tiny_env)
    dvc = subprocess.Popen([*DVC, "repro", "--single-item", "t@a"], cwd=root, env=tiny_env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any("sees.py" in " ".join(cmdline(p)) for p in psutil.Process(dvc.pid).children(recursive=True)):
        assert time.monotonic() < deadline and dvc.poll() is None, "t@a's command never started"
        time.sleep(0.2)
    os.killpg(dvc.pid, signal.SIGKILL)
    dvc.wait()
    rwlock = json.loads((root / ".dvc" / "tmp" / "rwlock").read_text())
    assert rwlock["write"][str(root / "seen" / "a.json")]["pid"] == dvc.pid      # left behind
    (root / "dvc.yaml").write_text((root / "dvc.yaml").read_text().replace("a: 60", "a: 0"))
    again = sh([*DVC, "repro", "--single-item", "t@a"], root, tiny_env)
    assert f"with (Pid {dvc.pid}), in RWLock-file 'seen/a.json' had been killed. Auto removed it" in again.stderr
    assert sh([*DVC, "status", "t@a"], root, tiny_env).stdout.strip() == "Data and pipelines are up to date."
