"""Concurrent runs: DVC's experiment queue with 2 workers, and two 2-process launches at once.

Issue requirement: two `dvc exp` queue jobs training different variants at the
same time both finish with correct metrics (no clash on the distributed port,
no shared temp file).

Everything runs in a private git copy of the project under pytest's tmp dir
(never in the checkout itself, whose DVC lock and outputs may be in use), with
a quick train section: 1 epoch, 384 training and 200 test images.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
QUICK = {"epochs": 1, "train_limit": 384, "test_limit": 200}
VARIANTS = ("skeleton", "lr_scheduler")   # two different architectures and schedules
QUEUE_TIMEOUT_S = 360
DVC = [sys.executable, "-m", "dvc"]
ACCELERATE_LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]
# The checkout's own outputs (possibly being written by a running `dvc repro`) stay behind.
NOT_COPIED = ("tests/", "data/", "models/", "checkpoints/", "metrics/", "dvc_plots/", "dvc.lock")


def mirror_location() -> str:
    return os.environ.get("MNIST_MIRROR") or str(Path(__file__).resolve().parents[2] / "shared" / "mnist")


def sh(cmd, cwd, env, timeout=300, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
                    f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def git(*args, cwd, env):
    return sh(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd, env)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """(root, env): a committed git copy of the project with quick params and MNIST in its DVC cache."""
    root = tmp_path_factory.mktemp("queue_project")
    listed = set()
    for extra in ([], ["--others", "--exclude-standard"]):
        out = subprocess.run(["git", "-C", str(REPO), "ls-files", *extra], capture_output=True,
                             text=True, check=True).stdout
        listed.update(out.splitlines())
    for rel in sorted(listed):
        src = REPO / rel
        if rel.startswith(NOT_COPIED) or not src.is_file():
            continue
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, root / rel)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["train"].update(QUICK)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    # No user Accelerate config and no inherited ACCELERATE_* launch settings; the
    # copy's own sources (not the editable install's) on the path of every stage.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(MNIST_MIRROR=mirror_location(), HF_HOME=str(root.parent / f"{root.name}_hf"),
               DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(root / "src"), os.environ.get("PYTHONPATH")])))

    sh(["git", "init", "-q"], root, env)
    git("add", "-A", cwd=root, env=env)
    git("commit", "-qm", "project copy, quick params", cwd=root, env=env)
    # Runs `python stages/download.py --root data`; committing dvc.lock lets each
    # queued experiment check MNIST out of the cache instead of downloading it again.
    sh([*DVC, "repro", "download"], root, env)
    git("add", "-A", cwd=root, env=env)
    git("commit", "-qm", "dvc.lock: download", cwd=root, env=env)
    return root, env


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


def test_queue_runs_two_variants_concurrently(project):
    root, env = project
    names = {v: f"exp-{v}" for v in VARIANTS}
    for variant, name in names.items():
        sh([*DVC, "exp", "run", "--queue", "-n", name, f"train@{variant}"], root, env)
    assert queue_status(root, env) == {n: "Queued" for n in names.values()}

    try:
        start = time.monotonic()
        # Not through a pipe: the detached celery workers inherit the caller's stdout and
        # stderr, so a captured `dvc queue start` would return only when they exit.
        start_log = root.parent / f"{root.name}_queue_start.log"
        with open(start_log, "w") as log:
            rc = subprocess.run([*DVC, "queue", "start", "-j", "2"], cwd=root, env=env, stdout=log,
                                stderr=subprocess.STDOUT, timeout=120).returncode
        assert rc == 0, start_log.read_text()
        print(f"\n  {time.monotonic() - start:5.0f} s  {start_log.read_text().strip()}")
        both_running = False
        while True:
            status = queue_status(root, env)
            print(f"  {time.monotonic() - start:5.0f} s  {status}")
            both_running |= all(status.get(n) == "Running" for n in names.values())
            if all(status.get(n) not in ("Queued", "Running") for n in names.values()):
                break
            if time.monotonic() - start > QUEUE_TIMEOUT_S:
                print(queue_logs(root, env, names.values()))
                pytest.fail(f"queue not done after {QUEUE_TIMEOUT_S} s: {status}")
            time.sleep(3)
        elapsed = time.monotonic() - start
        print(f"\nqueue -j 2: both experiments done in {elapsed:.0f} s; "
              f"seen Running together while polling: {both_running}")
        if status != {n: "Success" for n in names.values()}:
            print(queue_logs(root, env, names.values()))
            pytest.fail(f"queue status: {status}")

        # Concurrency: the two run_exp tasks went to two workers and their time
        # windows (from each worker's celery log) overlap.
        windows = run_exp_windows(root)
        assert len(windows) == 2 and all(w[1] and w[2] for w in windows.values()), windows
        assert len({w[0] for w in windows.values()}) == 2, f"one worker ran both tasks: {windows}"
        latest_start = max(w[1] for w in windows.values())
        earliest_end = min(w[2] for w in windows.values())
        assert latest_start < earliest_end, f"the two experiments ran one after the other: {windows}"
        print(f"overlap of the two experiments: {(earliest_end - latest_start).total_seconds():.1f} s")

        shown = json.loads(sh([*DVC, "exp", "show", "--json"], root, env).stdout)
        exps = {e["name"]: e["revs"][0] for base in shown for e in (base.get("experiments") or [])}
        for variant, name in names.items():
            assert name in exps, f"{name} missing from dvc exp show: {sorted(exps)}"
            rev = exps[name]
            assert not rev.get("error"), rev["error"]
            entry = rev["data"]["metrics"][f"metrics/{variant}.json"]
            assert "data" in entry, entry
            m = entry["data"]
            assert m["variant"] == variant
            assert (m["epochs"], m["train_images"], m["test_images"], m["num_processes"]) == (1, 384, 200, 1), m
            assert m["optimizer_steps"] == 3  # ceil(384 / 128)
            # The other variant's metrics file was not produced by this experiment.
            other = next(v for v in VARIANTS if v != variant)
            assert "data" not in rev["data"]["metrics"].get(f"metrics/{other}.json", {})
    finally:
        stop_queue(root, env)


# --- two multi-process launches at once ------------------------------------------------

def test_two_concurrent_two_process_launches_pick_free_ports(project, tmp_path):
    """`--main_process_port 0` (as in dvc.yaml): each 2-process gloo job picks its own free port."""
    root, env = project
    params = tmp_path / "params.yaml"
    shutil.copy(root / "params.yaml", params)
    procs = {}
    for variant in VARIANTS:
        log = open(tmp_path / f"{variant}.log", "w")
        procs[variant] = (subprocess.Popen(
            [*ACCELERATE_LAUNCH, "--multi_gpu", "--num_processes", "2", "--main_process_port", "0",
             "stages/train.py", variant, "--params", str(params), "--data", str(root / "data"),
             "--metrics", str(tmp_path / f"{variant}.json")],
            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    try:
        for variant, (proc, log) in procs.items():
            proc.wait(timeout=300)
            log.close()
    finally:
        for proc, log in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    for variant, (proc, _) in procs.items():
        assert proc.returncode == 0, (tmp_path / f"{variant}.log").read_text()[-4000:]
        m = json.loads((tmp_path / f"{variant}.json").read_text())
        assert m["variant"] == variant
        assert (m["num_processes"], m["epochs"], m["train_images"], m["test_images"]) == (2, 1, 384, 200), m
    # Atomic writes leave no temp file behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["params.yaml", *(f"{v}.log" for v in VARIANTS), *(f"{v}.json" for v in VARIANTS)])
