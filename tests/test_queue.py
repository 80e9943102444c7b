"""Concurrent runs: DVC's experiment queue with 2 workers, and two 2-process launches at once.

Issue requirement: two `dvc exp` queue jobs training different variants at the
same time both finish with correct metrics (no clash on the distributed port,
no shared temp file).

Everything runs in a private git copy of the project under pytest's tmp dir
(never in the checkout itself, whose DVC lock and outputs may be in use), with
a quick train section (1 epoch, 384 training and 200 test images) and a launch
section of two gloo CPU processes per run on a single machine (port 0: each run
picks a free rendezvous port). GPUs are hidden, so this holds on hosts with 0, 1
or many GPUs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from support.processes import TRAIN_OUTPUTS, run_together, train_cmd
from support.projects import DVC, experiments, git_commit, init_project, project_env, sh

pytestmark = pytest.mark.slow  # trains in subprocesses or runs stages/DVC

QUICK = {"epochs": 1, "train_limit": 384, "test_limit": 200,
         "overrides": {"launch.num_processes": 2, "launch.multi_gpu": True, "launch.main_process_port": 0}}
VARIANTS = ("skeleton", "lr_scheduler")   # two different architectures and schedules
QUEUE_TIMEOUT_S = 600
STATUS_EVERY_S = 20  # how often `dvc queue status` is asked while the workers' logs show a task running


@pytest.fixture(scope="module")
def project(tmp_path_factory, cpu_env):
    """(root, env, params): a committed git copy of the project with quick params and MNIST in its DVC cache."""
    root = tmp_path_factory.mktemp("queue_project") / "project"
    env = project_env(root, cpu_env)
    init_project(root, env, params=QUICK, exclude=("tests/",))
    # Committing download's dvc.lock lets each queued experiment check MNIST out of
    # the cache instead of downloading it again.
    sh([*DVC, "repro", "download"], root, env)
    git_commit(root, env, "dvc.lock: download")
    return root, env, yaml.safe_load((root / "params.yaml").read_text())


def run_summary(root, env, rev: str, variant: str, seed: int) -> dict | None:
    """The run summary train@<variant> committed in experiment commit `rev` (None if it has none)."""
    proc = sh(["git", "show", f"{rev}:metrics/runs/{variant}/seed_{seed}.json"], root, env, check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


# --- the experiment queue -----------------------------------------------------------

def queue_status(root, env) -> dict[str, str]:
    """{experiment name: Queued | Running | Success | Failed | ...} from `dvc queue status`."""
    out = sh([*DVC, "queue", "status"], root, env).stdout
    found = {}
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 3 and re.fullmatch(r"[0-9a-f]{7,40}", words[0]):
            found[words[1]] = words[-1]
    return found


def queue_logs(root, env, names) -> str:
    return "\n".join(f"--- dvc queue logs {n}\n" + sh([*DVC, "queue", "logs", n], root, env, check=False).stdout
                     for n in names)


LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/MainProcess\] Task "
                      r"dvc\.repo\.experiments\.queue\.tasks\.run_exp\[([0-9a-f-]+)\] (received|succeeded)")


def run_exp_windows(root) -> dict[str, list]:
    """{celery task id: [worker log, start, end]} of every run_exp task, from the workers' logs."""
    windows = {}
    for log in sorted((root / ".dvc" / "tmp" / "exps" / "celery").glob("*.out")):
        for line in log.read_text(errors="replace").splitlines():
            m = LOG_LINE.match(line)
            if m:
                when = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f")
                entry = windows.setdefault(m[2], [log.name, None, None])
                entry[1 if m[3] == "received" else 2] = when
    return windows


def stop_queue(root, env) -> None:
    """`dvc queue stop --kill`, then make sure no worker or experiment process of this copy lingers."""
    sh([*DVC, "queue", "stop", "--kill"], root, env, check=False, timeout=120)
    exps = root / ".dvc" / "tmp" / "exps"
    pids = set()
    for pidfile in [*exps.glob("celery/*.pid"), *exps.glob("run/*/*.pid")]:
        try:
            pids.add(int(pidfile.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            pass

    def ours(pid):  # alive and still a dvc process (not a recycled pid)
        try:
            return "dvc" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False

    deadline = time.monotonic() + 30
    while any(map(ours, pids)) and time.monotonic() < deadline:
        time.sleep(1)
    for pid in filter(ours, pids):
        os.kill(pid, signal.SIGKILL)


def test_queue_runs_two_multi_process_variants_concurrently(project):
    root, env, params = project
    launch, train = params["launch"], params["train"]
    assert launch["num_processes"] > 1 and launch["multi_gpu"] and launch["main_process_port"] == 0
    names = {v: f"exp-{v}" for v in VARIANTS}
    for variant, name in names.items():
        sh([*DVC, "exp", "run", "--queue", "-n", name, f"train@{variant}"], root, env)
    assert queue_status(root, env) == {n: "Queued" for n in names.values()}

    try:
        start = time.monotonic()
        # Not through a pipe: the detached celery workers inherit the caller's stdout and
        # stderr, so a captured `dvc queue start` would return only when they exit.
        start_log = root.parent / "queue_start.log"
        with open(start_log, "w") as log:
            rc = subprocess.run([*DVC, "queue", "start", "-j", "2"], cwd=root, env=env, stdout=log,
                                stderr=subprocess.STDOUT, timeout=120).returncode
        assert rc == 0, start_log.read_text()
        # `dvc queue status` (an interpreter loading DVC) every STATUS_EVERY_S, and as soon as the
        # workers' logs show both tasks ended: polling it every few seconds took CPU from the runs.
        asked = -STATUS_EVERY_S
        while True:
            windows = run_exp_windows(root)
            logged_done = len(windows) == 2 and all(w[2] for w in windows.values())
            if logged_done or time.monotonic() - asked >= STATUS_EVERY_S:
                asked, status = time.monotonic(), queue_status(root, env)
                if all(status.get(n) not in ("Queued", "Running") for n in names.values()):
                    break
            if time.monotonic() - start > QUEUE_TIMEOUT_S:
                print(queue_logs(root, env, names.values()))
                pytest.fail(f"queue not done after {QUEUE_TIMEOUT_S} s: {status}")
            time.sleep(1)
        print(f"\nqueue -j 2: both experiments done in {time.monotonic() - start:.0f} s")
        if status != {n: "Success" for n in names.values()}:
            print(queue_logs(root, env, names.values()))
            pytest.fail(f"queue status: {status}")

        # Concurrency, from timestamps the workers logged (polling `dvc queue status` on a
        # busy machine can miss an overlap): the two run_exp tasks went to two workers and
        # each started before the other ended.
        windows = run_exp_windows(root)
        assert len(windows) == 2 and all(w[1] and w[2] for w in windows.values()), windows
        assert len({w[0] for w in windows.values()}) == 2, f"one worker ran both tasks: {windows}"
        latest_start = max(w[1] for w in windows.values())
        earliest_end = min(w[2] for w in windows.values())
        assert latest_start < earliest_end, f"the two experiments ran one after the other: {windows}"
        print(f"overlap of the two experiments: {(earliest_end - latest_start).total_seconds():.1f} s")

        exps = experiments(root, env)
        for variant, name in names.items():
            assert name in exps, f"{name} missing from dvc exp show: {sorted(exps)}"
            rev = exps[name]
            assert not rev.get("error"), rev["error"]
            m = run_summary(root, env, rev["rev"], variant, train["seed"])
            assert m is not None, f"{name} committed no metrics/runs/{variant}/seed_{train['seed']}.json"
            assert m["variant"] == variant
            assert (m["epochs"], m["train_images"], m["test_images"]) == (
                train["epochs"], train["train_limit"], train["test_limit"]), m
            assert m["num_processes"] == launch["num_processes"], m
            assert m["optimizer_steps"] == -(-train["train_limit"] // train["batch_size"])
            # The other variant's run summary was not produced by this experiment.
            other = next(v for v in VARIANTS if v != variant)
            assert run_summary(root, env, rev["rev"], other, train["seed"]) is None
    finally:
        stop_queue(root, env)


# --- two multi-process launches at once ------------------------------------------------

def test_two_concurrent_two_process_launches_pick_free_ports(project, tmp_path):
    """dvc.yaml's launch (params.yaml: 2 processes, port 0) twice at once: each gloo job picks its own port."""
    root, env, params = project
    cmds = [train_cmd(v, root / "params.yaml", root / "data", tmp_path / v, outputs=("metrics",)) for v in VARIANTS]
    runs = run_together(cmds, env, tmp_path / "logs")
    train = params["train"]
    for variant, run in zip(VARIANTS, runs):
        assert run.returncode == 0, run.stderr[-4000:]
        m = json.loads((tmp_path / variant / TRAIN_OUTPUTS["metrics"]).read_text())
        assert m["variant"] == variant
        assert (m["num_processes"], m["epochs"], m["train_images"], m["test_images"]) == (
            params["launch"]["num_processes"], train["epochs"], train["train_limit"], train["test_limit"]), m
        # Atomic writes leave no temp file behind.
        assert [p.name for p in (tmp_path / variant).iterdir()] == [TRAIN_OUTPUTS["metrics"]]
