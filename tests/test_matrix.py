"""The run matrix (mnist_repro.parallel.matrix, mnist_repro.parallel.slots): slots split the host without overlap,
pinned runs see only their slot, a killed run loses only itself, and the pipeline run k at a time
ends exactly as a serial `dvc repro`: every stage in dvc.lock, the same weights and numbers.

Two kinds of project, each a throw-away git + DVC copy under pytest's tmp dir: a tiny one whose
stages record what they see (their CPU affinity, CUDA_VISIBLE_DEVICES, MNIST_REPRO_SLOT and when
they ran), and the real pipeline on a slice with two variants, whose training stages are also
stages of conftest's finished_pipeline (the serial `dvc repro` it is compared with)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml
from support.processes import without_timing
from support.projects import DVC, REPO, git_commit, git_init, init_project, project_env, repo_variants, sh

from mnist_repro.parallel.slots import Slot, SlotError, SlotPool, core_ranges, host_slots

MATRIX = (sys.executable, "-m", "mnist_repro.parallel.matrix")


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
        "import sys, time; from mnist_repro.parallel.slots import Slot, SlotPool; "
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
    from mnist_repro.parallel.matrix import task_slot_label

    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "777")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    monkeypatch.setenv("SLURMD_NODENAME", "node12")
    monkeypatch.setenv("MNIST_REPRO_GPUS", "0")   # as Slurm's CUDA_VISIBLE_DEVICES for a 1-GPU task
    assert task_slot_label() == "slurm:777_4@node12/gpu:0"
    monkeypatch.setenv("MNIST_REPRO_GPUS", "")
    assert task_slot_label() == f"slurm:777_4@node12/cpu:{core_ranges(os.sched_getaffinity(0))}"


def test_a_task_outside_its_stage_list_is_refused_with_the_fix(tmp_path, capsys):
    from mnist_repro.core import cli
    from mnist_repro.parallel.matrix import main

    (tmp_path / "stages.txt").write_text("train@a\ntrain@b\n")
    with pytest.raises(SystemExit):
        cli.run(main, ["task", "--stages", str(tmp_path / "stages.txt"), "--index", "2"])
    assert capsys.readouterr().err == (f"error: --index 2: {tmp_path}/stages.txt lists 2 stages (0..1); "
                                       "submit the array as --array=0-1\n")
    with pytest.raises(SystemExit):
        cli.run(main, ["gather", "--stages", str(tmp_path / "none.txt")])
    assert capsys.readouterr().err == (f"error: {tmp_path}/none.txt: no stage list; write it with "
                                       f"`python -m mnist_repro.parallel.matrix prepare --out {tmp_path}/none.txt`\n")


# --- slot settings: nonsense is refused, each with one line ------------------------------------

@pytest.mark.parametrize("argv,env,said", [
    (["--cores-per-slot", "0"], {"MNIST_REPRO_GPUS": ""},
     "--cores-per-slot 0: a run needs at least 1 core; use 1 to "),
    (["--cores-per-slot", "-2"], {"MNIST_REPRO_GPUS": ""}, "--cores-per-slot -2: a run needs at least 1 core"),
    (["--cores-per-slot", "1"], {"MNIST_REPRO_GPUS": "0,1"},
     "--cores-per-slot 1: this host's slots are its GPUs (0,1)"),
    (["--jobs", "0"], {"MNIST_REPRO_GPUS": "0,1"}, "--jobs 0: this host has 2 slot(s) (gpu:0, gpu:1); use 1 to 2"),
    ([], {"MNIST_REPRO_GPUS": "0,0"}, "GPUs 0,0: a GPU is named twice"),
    (["--lock-dir", "{tmp}/typo"], {"MNIST_REPRO_GPUS": ""}, "--lock-dir {tmp}/typo: no such directory; create it"),
    (["--lock-dir", "{tmp}/file"], {"MNIST_REPRO_GPUS": ""}, "--lock-dir {tmp}/file: not a directory"),
])
def test_nonsense_slot_settings_are_refused_in_one_line(argv, env, said, tmp_path, monkeypatch, capsys):
    """Before any DVC command runs (each case would otherwise plan, or run, on settings it did not ask for)."""
    from mnist_repro.core import cli
    from mnist_repro.parallel import matrix

    (tmp_path / "file").write_text("")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(matrix, "pending", lambda *a, **k: pytest.fail("planned despite the bad setting"))
    with pytest.raises(SystemExit) as stopped:
        cli.run(matrix.main, ["--root", str(REPO), "run", *(a.format(tmp=tmp_path) for a in argv)])
    err = capsys.readouterr().err
    assert stopped.value.code == 1 and err.count("\n") == 1, err
    assert err.startswith("error: " + said.format(tmp=tmp_path)), err


# --- the plan, from `dvc dag --dot` and `dvc status --json` ---------------------------------------

DOT = """strict digraph {
"check_params";
"download";
"train@a";
"seed@a-2";
"compare";
"check_params" -> "train@a";
"download" -> "train@a";
"check_params" -> "seed@a-2";
"download" -> "seed@a-2";
"train@a" -> "compare";
"seed@a-2" -> "compare";
}
"""
MISSING_DATA = [{"changed outs": {"data/MNIST/raw": "not in cache"}}]


def test_the_plan_is_what_dvc_status_reports_and_everything_after_it():
    from mnist_repro.parallel.matrix import make_plan, read_dag

    stages, deps = read_dag(DOT)
    assert stages == ["check_params", "download", "train@a", "seed@a-2", "compare"]
    assert deps["compare"] == {"train@a", "seed@a-2"} and deps["download"] == set()
    changed = [{"changed deps": {"src/x.py": "modified"}}]
    plan = make_plan(stages, deps, {"seed@a-2": changed})
    assert plan.order == ["seed@a-2", "compare"] and plan.waits == {"seed@a-2": set(), "compare": {"seed@a-2"}}
    plan = make_plan(stages, deps, {"download": changed})          # new code in download: all after it
    assert plan.order == ["download", "train@a", "seed@a-2", "compare"]
    assert plan.waits["compare"] == {"download", "train@a", "seed@a-2"}
    assert make_plan(stages, deps, {"download": changed}, targets=["train@a"]).order == ["download", "train@a"]


def test_a_fresh_clone_plans_the_data_and_the_missing_weights_not_every_run():
    """Only download's outputs missing (a clone): it reruns and restores the same SHA-256-pinned files,
    so the stages after it are pending only for reasons of their own (train@a: its weights)."""
    from mnist_repro.parallel.matrix import make_plan, read_dag

    stages, deps = read_dag(DOT)
    weights = [{"changed outs": {"models/a.pt": "not in cache"}}]
    plan = make_plan(stages, deps, {"download": MISSING_DATA, "train@a": weights})
    assert plan.order == ["download", "train@a", "compare"]
    assert plan.waits["train@a"] == {"download"} and plan.generated() == ["train@a"]


def test_the_matrix_reads_dvc_through_its_command_line_only():
    """No DVC internals (repo.index.graph, networkx): `dvc dag --dot` and `dvc status --json`, whose
    forms DVC documents, so a DVC release cannot change the plan silently."""
    import ast

    modules = sorted((REPO / "src" / "mnist_repro" / "parallel").glob("*.py"))
    assert {m.stem for m in modules} >= {"matrix", "slots", "estimate"}
    for module in modules:
        tree = ast.parse(module.read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module and not node.level}
        assert not imported & {"dvc", "networkx"}, (module, imported)


def test_a_dag_in_a_form_the_reader_does_not_know_stops_it_rather_than_planning_without_edges():
    from mnist_repro.parallel.matrix import MatrixError, read_dag

    with pytest.raises(MatrixError, match=r"printed a line this reader does not know: 'a -> b \[weight=1\];'"):
        read_dag('strict digraph {\n"a";\n"b";\na -> b [weight=1];\n}\n')


def test_an_unknown_target_is_refused_with_the_fix():
    from mnist_repro.parallel.matrix import MatrixError, make_plan, read_dag

    with pytest.raises(MatrixError, match=r"^train@b: no such stage in dvc.yaml; `dvc stage list` names them$"):
        make_plan(*read_dag(DOT), {}, targets=["train@b"])


# --- estimates: the committed runs' wall times ---------------------------------------------------

def run_file(variant: str, seconds: float, device: str, epochs: int = 15, **extra) -> dict:
    return {"variant": variant, "data_path": "ours", "mixed_precision": "no", "epochs": epochs,
            "train_images": 60000, "device_name": device, "wall_seconds": seconds, **extra}


def test_an_estimate_is_the_median_of_like_runs_on_this_kind_of_device_scaled_to_the_params():
    from mnist_repro.core.config import load_params
    from mnist_repro.parallel.estimate import Estimator, Recipe

    params = load_params(REPO / "params.yaml")
    runs = [run_file("skeleton", s, "AMD EPYC (1 cores)") for s in (100, 300, 200)]
    runs += [run_file("skeleton", 50, "NVIDIA H200"), run_file("skeleton", 7000, "AMD EPYC (1 cores)", epochs=30)]
    runs += [run_file("skeleton", 999, "AMD EPYC (1 cores)", mixed_precision="bf16")]
    scale = params.train.epochs * (params.train.train_limit or 60000) / 60000   # per epoch of the runs' 60000 images
    ours = Recipe("skeleton", "ours", "no")
    here = Estimator(runs, params, "AMD EPYC (1 cores)")(ours)
    assert (here.runs, here.device) == (4, "AMD EPYC (1 cores)")
    assert here.seconds == pytest.approx(statistics.median([100 / 15, 300 / 15, 200 / 15, 7000 / 30]) * scale)
    gpu = Estimator(runs, params, "NVIDIA H200")(ours)
    assert (gpu.seconds, gpu.runs) == (pytest.approx(50 / 15 * scale), 1)
    other = Estimator(runs, params, "AMD EPYC (4 cores)")(ours)         # the same CPU model, other cores
    assert other.device == "AMD EPYC (1 cores)" and other.runs == 4
    assert Estimator(runs, params, "AMD EPYC (1 cores)")(Recipe("dropout", "ours", "no")) is None


def test_the_projection_follows_the_matrix_order_waits_and_slots():
    from mnist_repro.parallel.estimate import duration, makespan

    waits = {"d": set(), "a": {"d"}, "b": {"d"}, "c": {"d"}, "bench": {"d"}, "t": {"a", "b", "c"}}
    seconds = {"d": 10, "a": 100, "b": 60, "c": 60, "bench": 30, "t": 5}
    order = ["d", "a", "b", "c", "bench", "t"]
    assert makespan(order, waits, seconds, 1) == 265
    # two slots: a on one, b then c on the other (ends 130), the benchmark alone at 130, t after it
    assert makespan(order, waits, seconds, 2, alone=("bench",)) == 10 + 120 + 30 + 5
    assert makespan(["t"], {"t": set()}, {"t": 5}, 2, busy=[40.0, 3.0]) == 40
    assert [duration(s) for s in (42, 600, 12_000)] == ["42 s", "10 min", "3.3 h"]


def test_the_time_left_follows_the_finished_runs_and_the_running_runs_epochs():
    from mnist_repro.parallel.matrix import Progress, make_plan, read_dag

    changed = [{"changed deps": {"src/x.py": "modified"}}]
    plan = make_plan(*read_dag(DOT), {"train@a": changed, "seed@a-2": changed})
    progress = Progress(plan, {"train@a": 100.0, "seed@a-2": 100.0}, slots=1)
    assert progress.left({}, 0.0) == 200
    progress.done.add("train@a")
    progress.measured["train@a"] = 200.0                 # took twice its estimate: so will the next
    assert progress.left({}, 0.0) == 200
    progress.epoch("seed@a-2", 1, 4)                     # started at 0, epoch 1 of 4 logged at 20 s
    assert progress.left({"seed@a-2": 0.0}, 20.0) == 60
    assert progress.line({"seed@a-2": 0.0}, 20.0) == "[1/2 runs done, 1 running, about 60 s left]"


@pytest.mark.slow
def test_every_run_of_the_table_and_its_checks_has_a_recipe_to_estimate():
    """Each stage of the groups estimate.stage_recipes knows is a stage of dvc.yaml, and each of
    dvc.yaml's stages of those groups has a recipe (a group it does not know is 'not estimated')."""
    from mnist_repro.core.config import load_params
    import yaml

    from mnist_repro.parallel.estimate import committed_runs, stage_recipes

    listed = sh([*DVC, "stage", "list", "--name-only"], REPO, os.environ.copy()).stdout.split()
    recipes = stage_recipes(load_params(REPO / "params.yaml"))
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    groups = {name for name, stage in stages.items()  # every group whose command trains
              if "stages/train.py" in stage["cmd"] or "stages/published_path.py" in stage["cmd"]}
    assert {"train", "seed", "published_path", "data_path_ours", "data_path_published"} <= groups
    assert set(recipes) == {s for s in listed if s.split("@")[0] in groups}
    variants = {(r["variant"], r["data_path"], r["mixed_precision"]) for r in committed_runs(REPO)}
    assert {(r.variant, r.data_path, r.mixed_precision) for r in recipes.values()} <= variants


# --- a tiny DVC project whose stages record what they see ---------------------------------------

# A stage's item: seconds to sleep, or until:<file> to wait (at most 120 s) for another stage's output,
# which makes two stages overlap, or one outlast another, without a fixed sleep long enough for a busy machine.
SEES = """import json, os, sys, time
start, wait = time.time(), sys.argv[2]
if wait.startswith("until:"):
    while not os.path.exists(wait[len("until:"):]) and time.time() < start + 120:
        time.sleep(0.05)
else:
    time.sleep(float(wait))
json.dump(dict(cores=sorted(os.sched_getaffinity(0)), gpus=os.environ.get("CUDA_VISIBLE_DEVICES"),
               slot=os.environ.get("MNIST_REPRO_SLOT"), start=start, end=time.time()), open(sys.argv[1], "w"))
"""


@pytest.fixture(scope="module")
def new_repo(tmp_path_factory, cli_env):
    """new_repo(root): an empty git + DVC repository at root (git init, dvc init), copied from one made
    once for the module: each project below starts as one."""
    template = tmp_path_factory.mktemp("repo_template") / "repo"
    template.mkdir()
    git_init(template, cli_env)
    sh([*DVC, "init", "-q"], template, cli_env)
    return lambda root: Path(shutil.copytree(template, root, symlinks=True))


def tiny_project(new_repo, root: Path, env: dict, sleeps: dict, benchmark: bool = False) -> Path:
    """up -> t@<name> (each sleeps or waits, SEES, then records what it saw in seen/<name>.json) -> gather; with
    benchmark, also up -> benchmark (a timing stage, which the matrix runs alone) -> gather."""
    new_repo(root)
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
    git_commit(root, env, "tiny project")
    return root


@pytest.fixture
def lock_dir(tmp_path) -> Path:
    """A lock directory for the slots (--lock-dir must name an existing one), private to the test."""
    path = tmp_path / "locks"
    path.mkdir()
    return path


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
def test_two_pinned_jobs_on_this_host_use_disjoint_cores_and_record_their_slots(tmp_path, new_repo, tiny_env, lock_dir):
    # a waits for b's record: if the two run at once they overlap, however slowly the machine starts them
    root = tiny_project(new_repo, tmp_path / "tiny", tiny_env, {"a": "until:seen/b.json", "b": 1, "c": 0}, benchmark=True)
    env = {**tiny_env, "MNIST_REPRO_GPUS": ""}
    proc = sh([*MATRIX, "run", "--jobs", "2", "--cores-per-slot", "1", "--lock-dir", lock_dir], root, env)
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
def test_a_simulated_two_gpu_host_gives_each_run_its_own_device(tmp_path, new_repo, tiny_env, lock_dir):
    root = tiny_project(new_repo, tmp_path / "tiny", tiny_env, {"a": "until:seen/b.json", "b": 1})
    env = {**tiny_env, "MNIST_REPRO_GPUS": "0,1"}
    dry = sh([*MATRIX, "run", "--dry", "--lock-dir", lock_dir], root, env).stdout
    assert "4 stage(s) to run, 2 at a time in gpu:0, gpu:1" in dry
    sh([*MATRIX, "run", "--lock-dir", lock_dir], root, env)
    runs = seen(root)
    assert overlapping(runs) == [("a", "b")]
    assert sorted((r["gpus"], r["slot"]) for r in runs.values()) == [("0", "gpu:0"), ("1", "gpu:1")]
    assert runs["a"]["cores"] != runs["b"]["cores"]      # one core each of the two
    assert_clean_and_locked(root, tiny_env)


@pytest.mark.slow
def test_a_killed_run_loses_only_itself_frees_its_slot_and_reruns(tmp_path, new_repo, tiny_env, lock_dir):
    # b holds the other slot until c has run: c can only start in the killed run's slot
    root = tiny_project(new_repo, tmp_path / "tiny", tiny_env, {"a": 60, "b": "until:seen/c.json", "c": 1})
    env = {**tiny_env, "MNIST_REPRO_GPUS": ""}
    cmd = [str(c) for c in (*MATRIX, "run", "--cores-per-slot", "1", "--lock-dir", lock_dir)]
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
        try:
            p.kill()
        except psutil.NoSuchProcess:                     # a short-lived child (git) ended meanwhile
            pass
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


@pytest.mark.slow
def test_a_partial_run_says_what_is_stale_and_the_run_that_completes_it_runs_gather(tmp_path, new_repo, tiny_env, lock_dir):
    """`run t@a` leaves t@b and gather stale and says so (as `dvc status` does); `run t@b` then
    finishes everything gather depends on, so gather runs too and `dvc status` is clean."""
    root = tiny_project(new_repo, tmp_path / "tiny", tiny_env, {"a": 0, "b": 0})
    env = {**tiny_env, "MNIST_REPRO_GPUS": ""}
    cmd = [*MATRIX, "run", "--lock-dir", lock_dir]
    first = sh([*cmd, "t@a"], root, env).stdout
    assert [line.split()[1] for line in first.splitlines() if line.startswith("start")] == ["up", "t@a"]
    assert first.splitlines()[-1].startswith("done: 2 stage(s) recorded in dvc.lock; still stale (`dvc status`): "
                                             "gather, t@b; "), first      # dvc.yaml's order (keys sorted)
    assert set(json.loads(sh([*DVC, "status", "--json"], root, tiny_env).stdout)) == {"t@b", "gather"}
    second = sh([*cmd, "t@b"], root, env).stdout
    assert [line.split()[1] for line in second.splitlines() if line.startswith("start")] == ["t@b", "gather"]
    assert "then gather: every stage they depend on is up to date now" in second
    assert second.splitlines()[-1] == "done: 2 stage(s) recorded in dvc.lock; `dvc status`: up to date", second
    assert_clean_and_locked(root, tiny_env)


# A stage that trains epochs of a given length, saves each finished one (ck/<name>), resumes after
# the last saved, and on a Ctrl-C says in one line what it saved (the training stage's contract).
EPOCHS = """import os, signal, sys, time
name, epochs, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ck = os.path.join("ck", name)
saved = int(open(ck).read()) if os.path.exists(ck) else 0
def stop(signum, frame):
    print(f"interrupted: epochs 1-{saved} saved in {ck}; the rerun resumes after epoch {saved}" if saved else
          "interrupted: no epoch finished, nothing saved; the rerun starts at epoch 1", flush=True)
    sys.exit(130)
signal.signal(signal.SIGINT, stop)
if saved:
    print(f"resuming after epoch {saved}", flush=True)
for k in range(saved + 1, epochs + 1):
    time.sleep(seconds)
    print(f"{name} epoch {k}/{epochs}", flush=True)
    os.makedirs("ck", exist_ok=True)
    open(ck, "w").write(str(k))
    saved = k
open(os.path.join("out", name), "w").write(str(saved))
"""


def epochs_project(new_repo, root: Path, env: dict, runs: dict) -> Path:
    """up -> e@<name> (python epochs.py <name> <epochs> <seconds>) -> gather."""
    new_repo(root)
    (root / "epochs.py").write_text(EPOCHS)
    (root / "params.yaml").write_text((Path(__file__).parents[1] / "params.yaml").read_text())
    (root / ".gitignore").write_text("/ck/\n")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "up": {"cmd": "echo up > up.txt", "outs": ["up.txt"]},
        "e": {"foreach": runs, "do": {"cmd": "python epochs.py ${key} ${item}", "deps": ["up.txt", "epochs.py"],
                                      "outs": [{"out/${key}": {"cache": False}}]}},
        "gather": {"cmd": "cat out/* > all.txt", "deps": ["out"], "outs": ["all.txt"]}}}))
    (root / "out").mkdir()
    git_commit(root, env, "epochs project")
    return root


@pytest.mark.slow
def test_after_a_ctrl_c_the_matrix_says_what_each_run_saved_and_the_rerun_does_that(tmp_path, new_repo, tiny_env, lock_dir):
    root = epochs_project(new_repo, tmp_path / "epochs", tiny_env, {"a": "5 1", "b": "2 90"})
    env = {**tiny_env, "MNIST_REPRO_GPUS": ""}
    cmd = [str(c) for c in (*MATRIX, "run", "--cores-per-slot", "1", "--lock-dir", lock_dir)]
    runner = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    printed = []
    reader = threading.Thread(target=lambda: printed.extend(runner.stdout), daemon=True)
    reader.start()
    log_a = root / ".dvc" / "tmp" / "matrix" / "e@a.log"
    deadline = time.monotonic() + 180
    while not (any(line.startswith("epoch  e@a") for line in printed) and "a epoch 2/5" in log_a.read_text()):
        assert runner.poll() is None and time.monotonic() < deadline, printed
        time.sleep(0.2)
    runner.send_signal(signal.SIGINT)                   # a terminal's Ctrl-C reaches the matrix ...
    err = runner.stderr.read()                          # (stdout is the reader's)
    runner.wait(timeout=180)
    reader.join(timeout=30)
    out = "".join(printed)
    assert runner.returncode == 130, (out, err)
    assert "nothing was saved" not in out + err         # ... which speaks for each run, not for itself
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("interrupted:"))
    said = {line.split()[0]: line.strip() for line in lines[first + 1:] if line.strip()}
    assert out.splitlines()[-1].startswith("run the same command to go on"), out
    saved = re.search(r"e@a stopped: interrupted: epochs 1-(\d+) saved in ck/a; the rerun resumes after epoch \1 ",
                      said["e@a"])
    assert saved, out
    assert said["e@b"].startswith("e@b stopped: interrupted: no epoch finished, nothing saved; "), out
    assert said["1"] == "1 stage(s) not started", out          # gather
    assert re.search(r"^epoch  e@a \d/5 in cpu:\d \[0/2 runs done, 2 running\]$", out, re.M), out   # progress

    (root / "dvc.yaml").write_text((root / "dvc.yaml").read_text().replace("2 90", "2 0"))
    again = sh(cmd, root, env).stdout                    # the same command: what each said
    logs = {name: (root / ".dvc" / "tmp" / "matrix" / f"e@{name}.log").read_text() for name in "ab"}
    assert f"resuming after epoch {saved[1]}" in logs["a"] and "resuming" not in logs["b"], logs
    assert [line.split()[1] for line in again.splitlines() if line.startswith("start")] == ["e@a", "e@b", "gather"]
    assert again.splitlines()[-1] == "done: 3 stage(s) recorded in dvc.lock; `dvc status`: up to date", again


# --- the real pipeline on a slice: the matrix against a serial `dvc repro` -------------------------

def matrix_params() -> dict:
    """Overrides for write_quick_params: two variants (under_5k, which the committed design search
    and the confirmation need, and skeleton), no extra seeds (slow group included), precision,
    published-path, confirmation, compile-check or data-path-test runs; one torch thread per run, so a
    run's numbers do not depend on how many cores it was given; a benchmark of the paths that need
    neither a GPU nor a compiler (fp16 is skipped on a CPU; matrix_env names no compiler). The train
    section and these two variants are those of conftest's finished_pipeline (QUICK_PIPELINE), so their
    training stages are the same stages as there: same command, deps and params."""
    return {"overrides": {"variants": repo_variants(("skeleton", "under_5k")),
                          "seeds.variants": [], "seeds.extra": [], "seeds.slow": {"variants": [], "extra": []},
                          "confirmation.seeds": [], "precision.variant": "skeleton",
                          "precision.seeds": [], "published_path.variants": [], "benchmark.variant": "skeleton",
                          "compile_check.variants": ["skeleton"], "compile_check.seeds": [],
                          "data_path_test.variants": [], "data_path_test.seeds": [],
                          "benchmark.repeats": 1, "benchmark.mixed_precision": "fp16", "train.cpu_threads": 1}}


# compare and report read these folders; with no published-path, confirmation, precision,
# compile-check or data-path-test stage nothing writes them.
EMPTY_INPUTS = ("metrics/published_path", "metrics/confirmation", "metrics/precision", "metrics/compile_check",
                "metrics/data_path_test")
TRAINING = ("train@skeleton", "train@under_5k")


def matrix_env(root: Path, cpu_env: dict) -> dict:
    """The environment of a matrix project's commands: its own sources first, and a C++ compiler that
    does not exist ($CXX), so the benchmark stage leaves the compiled path out (saying why) instead of
    starting two more processes; no stage of the project compiles (train.compile false, no
    compile_check seeds)."""
    return {**project_env(root, cpu_env), "CXX": "no-such-c++"}


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
def test_the_pipeline_two_at_a_time_ends_as_a_serial_repro(tmp_path, cpu_env, lock_dir, finished_pipeline):
    parallel = tmp_path / "parallel"
    env = matrix_env(parallel, cpu_env)
    make_matrix_project(parallel, env)
    proc = sh([*MATRIX, "run", "--cores-per-slot", "1", "--lock-dir", lock_dir], parallel, env,
              timeout=1200)
    lines = proc.stdout.splitlines()
    first_run = next(i for i, line in enumerate(lines) if line.startswith("start  train@"))
    assert any(re.match(rf"{len(TRAINING)} training run\(s\) pending\b", line) for line in lines[:first_run]), lines
    assert max(map(len, lines)) <= 120, [line for line in lines if len(line) > 120]
    starts = [line.split()[1:4:2] for line in lines if line.startswith("start")]
    assert {stage for stage, _ in starts} == {"check_params", "download", *TRAINING, "benchmark", "compare",
                                              "report"}
    assert {slot for stage, slot in starts if stage in TRAINING} == {"cpu:0", "cpu:1"}
    events = [line.split()[:2] for line in proc.stdout.splitlines() if line.split()[1:2] in ([t] for t in TRAINING)]
    assert [e[0] for e in events[:2]] == ["start", "start"], proc.stdout   # both trained at once
    assert_clean_and_locked(parallel, env)

    # The same training stages one after another, unpinned, as plain `dvc repro` ran them: in
    # conftest's finished_pipeline, the whole pipeline on the same slice (it trains more variants and seeds).
    serial = finished_pipeline["work"]
    for stage in TRAINING:
        assert lock_entry(parallel, stage) == lock_entry(serial, stage)   # same command, deps and params
        mine, alone = weights(parallel, stage), weights(serial, stage)
        assert mine.keys() == alone.keys() and all(mine[k].equal(alone[k]) for k in mine)   # bit for bit
    mine = run_files(parallel)
    alone = {rel: run for rel, run in run_files(serial).items() if rel in mine}
    slot_of = dict(starts)
    for rel, run in mine.items():   # a summary records the slot its run was pinned to; a dvc repro, none
        if rel.startswith("metrics/runs/"):
            assert (run.pop("slot"), alone[rel].pop("slot")) == (slot_of[f"train@{run['variant']}"], None), rel
            # ... and the cores it saw: its slot's one, and the same CPU model as the unpinned run's
            pinned, unpinned = run.pop("device_name"), alone[rel].pop("device_name")
            assert pinned == re.sub(r"\(\d+ cores\)$", "(1 cores)", unpinned), (pinned, unpinned)
    assert mine == alone                                                   # timing, slot and cores aside
    assert len(mine) == 2 * len(TRAINING)


# --- what the design relies on in DVC itself (3.67) ------------------------------------------------

@pytest.mark.slow
def test_dvc_restores_a_stage_from_its_run_cache_only_without_persist_outputs(tmp_path, new_repo, tiny_env):
    """Why the experiment queue cannot fill the workspace: its results could come back only through
    the run-cache, and DVC keeps none for a stage with a persist output (every training stage's
    checkpoints)."""
    root = new_repo(tmp_path / "cache")

    def stage(persist: bool) -> dict:
        return {"cmd": "cp in.txt out_${item}.txt && mkdir -p ck_${item}", "deps": ["in.txt"],
                "outs": ["out_${item}.txt", {"ck_${item}": {"persist": persist}}]}

    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "plain": {"foreach": ["p"], "do": stage(False)}, "resumable": {"foreach": ["r"], "do": stage(True)}}}))
    (root / "in.txt").write_text("1\n")
    for value in ("1", "2"):
        (root / "in.txt").write_text(f"{value}\n")
        sh([*DVC, "repro"], root, tiny_env)
    (root / "in.txt").write_text("1\n")                  # back to a state both stages ran in
    out = sh([*DVC, "repro"], root, tiny_env).stdout
    assert "Stage 'plain@p' is cached - skipping run, checking out outputs" in out
    assert "Running stage 'resumable@r'" in out


@pytest.mark.slow
def test_a_killed_dvc_leaves_its_lock_entry_which_the_next_run_removes(tmp_path, new_repo, tiny_env):
    root = tiny_project(new_repo, tmp_path / "tiny", tiny_env, {"a": 60})
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
