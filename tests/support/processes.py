"""Training runs in subprocesses: dvc.yaml's launch command for a test's params, runs started together
or stopped at a checkpoint, their errors, and results compared without their timings."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import yaml

from support.projects import DVC, REPO


# --- training runs as stage subprocesses: dvc.yaml's launch flags, several launchers, a kill ----

TRAIN_TIMEOUT_S = 300
# params overrides for test runs: one torch thread per process (speed only, not in the checkpoint
# fingerprint); the tests share a few busy cores, where threads waiting on each other cost more
# than they bring.
ONE_THREAD = {"train.cpu_threads": 1}
LAUNCH = (sys.executable, "-m", "mnist_repro.training.launch")  # dvc.yaml's launcher: `accelerate launch`, its flags
TRAIN_OUTPUTS = {"metrics": "metrics.json", "history": "history.json", "model": "model.pt",
                 "errors": "errors.json"}


def _train_stage_launch() -> str:
    """The launch part of dvc.yaml's train stage command, unresolved: what follows
    `python -m mnist_repro.training.launch` up to --machine_rank (`${launch}` today)."""
    cmd = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]["cmd"]
    return cmd.split(" ".join(LAUNCH[1:]), 1)[1].split("--machine_rank", 1)[0]


@functools.lru_cache(maxsize=1)
def _parsing_config() -> dict:
    """The repository's DVC `parsing` settings (how a boolean or a list is unpacked)."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return dict(repo.config.get("parsing", {}))


def launch_flags(params: Path) -> list[str]:
    """The `accelerate launch` flags dvc.yaml's train stage gets from a params file, resolved
    by DVC itself (its interpolation of the stage command against that file's values)."""
    import shlex

    from dvc.fs import LocalFileSystem
    from dvc.parsing.context import Context

    context = Context.load_from(LocalFileSystem(), str(Path(params).resolve()))
    return shlex.split(context.resolve_str(_train_stage_launch(), config=_parsing_config()))


def train_cmd(variant: str, params: Path, data: Path, out: Path, *, outputs=("metrics", "history", "model"),
              checkpoint: Path | None = None, launch: bool = True, machine_rank: int = 0,
              launch_extra=()) -> list[str]:
    """stages/train.py writing `outputs` (named as in TRAIN_OUTPUTS) into out. With launch: under
    dvc.yaml's launcher (LAUNCH) with the params file's launch flags and --machine_rank, as dvc.yaml
    runs it, then launch_extra (a later flag overrides the params'). Without: plain
    `python stages/train.py`."""
    stage = [str(REPO / "stages" / "train.py"), variant, "--params", str(params), "--data", str(data)]
    for name in outputs:
        stage += [f"--{name}", str(Path(out) / TRAIN_OUTPUTS[name])]
    if checkpoint:
        stage += ["--checkpoint", str(checkpoint)]
    if not launch:
        return [sys.executable, *stage]
    return [*LAUNCH, *launch_flags(params), "--machine_rank", str(machine_rank),
            *map(str, launch_extra), *stage]


def run_cmd(cmd, env: dict, timeout: float = TRAIN_TIMEOUT_S):
    """cmd in the repository root; output decoded by hand (text=True would turn tqdm's \\r into \\n)."""
    import subprocess

    proc = subprocess.run([str(c) for c in cmd], cwd=REPO, env=env, capture_output=True, timeout=timeout)
    proc.stdout, proc.stderr = proc.stdout.decode(), proc.stderr.decode()
    return proc


def error_lines(stderr: str) -> list[str]:
    """The `error: ...` lines a refused run printed (what a terminal shows last after tqdm's \\r)."""
    return [line.split("\r")[-1] for line in stderr.split("\n") if line.split("\r")[-1].startswith("error: ")]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a fixed --main_process_port)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Started:
    """A command (a launcher and the workers it starts) running in its own session, its stdout
    and stderr in <log>.out / <log>.err. It takes a Ctrl-C as a terminal's job does: SIGINT at its
    default even when pytest runs with SIGINT ignored (started with `&` or nohup), which a child
    would otherwise inherit."""

    def __init__(self, cmd, env: dict, log: Path):
        import signal
        import subprocess

        self.out, self.err = Path(f"{log}.out"), Path(f"{log}.err")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=env, stdout=out, stderr=err,
                                         start_new_session=True,
                                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    @property
    def returncode(self):
        return self.proc.poll()

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the command and every process under it, launcher first (so it starts no more):
        torch's elastic launcher starts each worker in a session of its own, so a killed
        launcher's process group would leave its workers running."""
        import psutil  # an Accelerate dependency

        try:
            root = psutil.Process(self.proc.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for process in tree:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(tree, timeout=60)
        self.proc.wait(timeout=60)


def _start_all(cmds, env: dict, log_dir: Path) -> list[Started]:
    return [Started(cmd, env, Path(log_dir) / f"run{i}") for i, cmd in enumerate(cmds)]


def run_together(cmds, env: dict, log_dir: Path, timeout: float = TRAIN_TIMEOUT_S) -> list[Started]:
    """Start every command at once (the nodes of one job) and wait for all; a run still going
    after `timeout` (a hang in mismatched collectives) kills them all and fails the test."""
    import time

    runs = _start_all(cmds, env, log_dir)
    deadline = time.monotonic() + timeout
    try:
        while any(r.returncode is None for r in runs):
            if time.monotonic() > deadline:
                pytest.fail(f"still running after {timeout} s:\n" + "\n".join(
                    f"--- run {i} stderr\n{r.stderr[-3000:]}" for i, r in enumerate(runs)))
            time.sleep(0.1)
    finally:
        for r in runs:
            r.kill()
    return runs


def run_until_checkpoint(cmds, env: dict, log_dir: Path, manifests, timeout: float = TRAIN_TIMEOUT_S,
                         epoch: int | None = None):
    """Start every command at once and SIGKILL them all as soon as every checkpoint manifest in
    `manifests` names a saved state (that of `epoch`, when given: an interrupted job); fails if a
    run ends first. Returns the runs and the manifests' contents at the kill."""
    import json
    import time

    runs = _start_all(cmds, env, log_dir)
    deadline = time.monotonic() + timeout

    def has_state(path) -> bool:
        try:
            state = json.loads(Path(path).read_text()).get("state")
            return bool(state) and (epoch is None or state == f"epoch-{epoch}")
        except (OSError, ValueError):  # not written yet
            return False

    try:
        while not all(has_state(m) for m in manifests):
            ended = [i for i, r in enumerate(runs) if r.returncode is not None]
            if ended or time.monotonic() > deadline:
                pytest.fail(f"runs {ended} ended (or {timeout} s passed) before every manifest had a state:\n"
                            + "\n".join(f"--- run {i} stderr\n{r.stderr[-3000:]}" for i, r in enumerate(runs)))
            time.sleep(0.01)
    finally:
        for r in runs:
            r.kill()
    return runs, [json.loads(Path(m).read_text()) for m in manifests]


TIMING_KEYS = ("wall_seconds", "seconds", "segments")  # segments: when, and in how many sessions, it ran


def without_timing(result):
    """A run summary (dict) or history (list of dicts) without its wall times and sessions, the
    only fields two identical runs differ in (a resumed run has a session per start)."""
    if isinstance(result, list):
        return [without_timing(r) for r in result]
    return {k: v for k, v in result.items() if k not in TIMING_KEYS}


def evaluate_saved(model_path: Path, variant: str, params_path: Path, data_root: Path) -> dict:
    """The saved weights evaluated in this process on the params' test slice: mean NLL, number
    correct and each image's predicted label."""
    import torch
    import torch.nn.functional as F

    from mnist_repro.core.config import load_params
    from mnist_repro.core.data import load_split
    from mnist_repro.core.models import build_model
    from mnist_repro.training.device_data import prepare_images

    params = load_params(params_path)
    v = params.variant(variant)
    model = build_model(v.model, v.dropout)
    model.load_state_dict(torch.load(model_path, weights_only=True))
    model.eval()
    images, labels = load_split(data_root, train=False, limit=params.train.test_limit)
    with torch.no_grad():
        logits = model(prepare_images(images, params.train, augment=False))
    predicted = logits.argmax(1)
    return {"loss": F.nll_loss(logits, labels).item(), "correct": int((predicted == labels).sum()),
            "predicted": predicted.tolist(), "labels": labels.tolist()}
