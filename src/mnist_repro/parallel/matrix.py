"""The pipeline's pending stages, run k at a time in one workspace, each pinned to its own slot.

    python -m mnist_repro.parallel.matrix run                 # this host: every GPU, or every core, busy
    python -m mnist_repro.parallel.matrix run --dry           # the plan: stages, what each waits for, the estimate
    python -m mnist_repro.parallel.matrix prepare --out F     # Slurm: upstream stages now, the array's stages in F
    python -m mnist_repro.parallel.matrix task --stages F --index I   # Slurm array task I: one stage
    python -m mnist_repro.parallel.matrix gather --stages F   # Slurm: check every array stage, then the rest

DVC does the work: every stage runs as ``dvc --wait-for-lock repro -s <stage>`` in the
one checkout. DVC releases the repo lock while a stage's command runs and guards each
dep and out with a per-path read/write lock, so independent stages run side by side and
each records its own dvc.lock entry (read-modify-write under the repo lock). What is
home-made is only which stage runs when (pending stages from `dvc status --json` and
everything downstream of them in `dvc dag --dot`, started once their pending upstream
stages are done, as `dvc repro` orders them) and where (slots.py). DVC is read through
its command line only (JSON and DOT output), not its Python internals. A stage that fails
stops only the stages downstream of it; rerunning the command reruns it, resuming from
its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import UserError
from .estimate import Estimator, committed_runs, duration, makespan, stage_recipes
from .slots import (Slot, SlotError, SlotPool, allowed_cores, check_lock_dir, core_ranges, host_slots,
                    visible_gpus)

DVC = (sys.executable, "-m", "dvc")
LOG_DIR = Path(".dvc/tmp/matrix")   # per-stage logs (git-ignored with the rest of .dvc/tmp)
POLL_S = 0.2
LOG_POLL_S = 2.0                    # how often the running stages' logs are read for finished epochs
STOP_WAIT_S = 60                    # after a Ctrl-C: how long the runs get to save and exit
# Stages that time something: run with every slot's devices, when nothing else runs.
ALONE = ("benchmark",)
# Stages whose outputs are fixed by pinned content (check_params: a constant stamp; download:
# MNIST checked against its SHA-256 digests, data.MNIST_FILES): when only their outputs are
# missing (a fresh clone), rerunning them restores the same files, so the stages after them
# are pending only for reasons of their own.
PINNED = ("check_params", "download")
EPOCH = re.compile(r"\bepoch (\d+)/(\d+)\b")   # the line a training stage prints per epoch in a log
EDGE = re.compile(r'^"(.+)" -> "(.+)";$')
NODE = re.compile(r'^"(.+)";$')


class MatrixError(UserError):
    """Stages of the matrix failed or are not done."""


@dataclass
class Plan:
    order: list[str]                                          # pending stages, dvc.yaml order
    waits: dict[str, set[str]] = field(default_factory=dict)  # stage -> pending stages upstream of it
    upstream: dict[str, set[str]] = field(default_factory=dict)  # stage -> every stage upstream of it
    stale: list[str] = field(default_factory=list)            # what `dvc status` reports changed, in order

    def generated(self) -> list[str]:
        """Stages made by foreach/matrix (train@..., seed@...: the matrix) that wait on no other such stage."""
        return [s for s in self.order if "@" in s and not any("@" in w for w in self.waits[s])]


def dvc_out(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*DVC, *args], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def dvc_result(proc: subprocess.Popen) -> str:
    out, err = proc.communicate()
    if proc.returncode:
        said = [line for line in err.splitlines() if line.strip()]
        raise MatrixError(f"`dvc {' '.join(proc.args[len(DVC):])}` failed: {said[-1] if said else proc.returncode}")
    return out


def read_dag(dot: str) -> tuple[list[str], dict[str, set[str]]]:
    """`dvc dag --dot` -> (every stage, in the order DVC lists them: dvc.yaml's), {stage: the
    stages it depends on directly} (DVC draws an edge from a stage to each stage that reads its outputs)."""
    stages, deps = [], {}
    for line in filter(None, map(str.strip, dot.splitlines())):
        if m := EDGE.match(line):
            deps.setdefault(m[2], set()).add(m[1])
        elif m := NODE.match(line):
            stages.append(m[1])
        elif line not in ("strict digraph {", "digraph {", "}"):   # a format this reader does not know
            raise MatrixError(f"`dvc dag --dot` printed a line this reader does not know: {line!r}; "
                              "tell us the DVC version (`dvc --version`), or use `dvc repro` meanwhile")
    return stages, {s: deps.get(s, set()) for s in stages}


def closure(start, edges: dict[str, set[str]]) -> set[str]:
    """Every stage reachable from `start` along edges (not the start itself)."""
    seen, todo = set(), list(start)
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def only_missing_outputs(entry: list) -> bool:
    """A `dvc status --json` entry whose every change is an output not in the workspace."""
    return bool(entry) and all(isinstance(change, dict) and set(change) == {"changed outs"} and
                               set(change["changed outs"].values()) <= {"not in cache", "deleted"}
                               for change in entry)


def make_plan(stages: list[str], deps: dict[str, set[str]], status: dict, targets=()) -> Plan:
    """What `dvc repro [targets]` would run: stages `dvc status` reports changed, and every stage
    downstream of one, each with the pending stages it must wait for."""
    dependents = {s: set() for s in stages}
    for stage, ups in deps.items():
        for up in ups:
            dependents[up].add(stage)
    upstream = {s: closure([s], deps) for s in stages}
    scope = set(stages)
    if targets:
        unknown = [t for t in targets if t not in upstream]
        if unknown:
            raise MatrixError(f"{unknown[0]}: no such stage in dvc.yaml; `dvc stage list` names them")
        scope = set(targets) | {u for t in targets for u in upstream[t]}
    changed = {name for name in status if name in scope}
    spreads = {name for name in changed if not (name in PINNED and only_missing_outputs(status[name]))}
    todo = changed | (closure(spreads, dependents) & scope)
    order = [name for name in stages if name in todo]
    return Plan(order, {name: upstream[name] & todo for name in order}, upstream,
                [name for name in stages if name in status])


def pending(root: Path, targets=(), meanwhile=None) -> Plan:
    """The plan for `dvc repro [targets]` in root, from `dvc dag --dot` and `dvc status --json`
    (run at the same time, while this process does `meanwhile()`)."""
    dag, status = dvc_out(root, "dag", "--dot"), dvc_out(root, "status", "--json")
    if meanwhile:
        meanwhile()
    stages, deps = read_dag(dvc_result(dag))
    return make_plan(stages, deps, json.loads(dvc_result(status) or "{}"), targets)


def stale(root: Path) -> list[str]:
    """The stages `dvc status` reports changed now, in dvc.yaml order."""
    return pending(root).stale


def repro_cmd(stage: str) -> list[str]:
    """One stage, no upstream (the plan ran it), waiting for DVC's repo lock rather than failing on it."""
    return [*DVC, "--wait-for-lock", "repro", "--single-item", stage]


def last_line(path: Path) -> str | None:
    """What a stopped or failed stage said last in its log: its own one line (``error: ...``,
    ``interrupted: ...``, mnist_repro.core.cli), else DVC's ``ERROR: ...``."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").split("\n")]
    except OSError:
        return None
    for prefixes in (("error:", "interrupted:"), ("ERROR:",)):
        said = [line for line in lines if line.startswith(prefixes)]
        if said:
            return said[-1]
    return None


class Progress:
    """Runs done and pending, and the time left: each stage's estimate (estimate.py), corrected
    by how the finished training runs compared with theirs, and each running run's epochs."""

    def __init__(self, plan: Plan, estimates: dict[str, float], slots: int, alone=ALONE):
        self.plan, self.estimates, self.slots, self.alone = plan, estimates, slots, alone
        self.runs = [s for s in plan.order if "@" in s]       # the training runs (foreach/matrix stages)
        self.done: set[str] = set()
        self.measured: dict[str, float] = {}    # finished stage with an estimate -> its seconds
        self.epochs: dict[str, tuple[int, int]] = {}     # running stage -> (last epoch logged, of)
        self.first: dict[str, int] = {}                  # running stage -> first epoch it logged

    def epoch(self, stage: str, k: int, n: int) -> None:
        self.first.setdefault(stage, k)
        self.epochs[stage] = (k, n)

    def ratio(self) -> float:
        """How long the finished runs took against their estimates (1 before any has)."""
        if not self.measured:
            return 1.0
        return sum(self.measured.values()) / sum(self.estimates[s] for s in self.measured)

    def left(self, running: dict[str, float], now: float) -> float:
        """Seconds until every stage is done: `running` maps a running stage to when it started."""
        ratio, busy = self.ratio(), []
        for stage, began in running.items():
            elapsed = now - began
            left = self.estimates.get(stage, 0.0) * ratio - elapsed
            if stage in self.epochs:     # its epochs so far this session (a resumed run starts later)
                k, n = self.epochs[stage]
                left = (n - k) * elapsed / (k - self.first[stage] + 1)
            busy.append(max(left, 0.0))
        todo = [s for s in self.plan.order if s not in self.done and s not in running]
        seconds = {s: self.estimates.get(s, 0.0) * ratio for s in todo}
        return makespan(todo, {s: self.plan.waits[s] - self.done - set(running) for s in todo}, seconds,
                        self.slots, self.alone, busy)

    def line(self, running: dict[str, float], now: float) -> str:
        """[training runs done/all, running, time left], or stages when none is a training run."""
        if not self.runs:
            return f"[{len(self.done)}/{len(self.plan.order)} stages done, {len(running)} running]"
        done = sum(1 for s in self.runs if s in self.done)
        busy = sum(1 for s in running if s in self.runs)
        left = f", about {duration(self.left(running, now))} left" if self.estimates else ""
        return f"[{done}/{len(self.runs)} runs done, {busy} running{left}]"


def run_plan(plan: Plan, pool: SlotPool, root: Path, env: dict | None = None, log=print, alone=ALONE,
             progress: Progress | None = None) -> list[str]:
    """Start every stage of the plan whose upstream is done in a free slot, until all are done
    or stopped; a stage in `alone` waits until nothing else is ready or running, then gets every
    slot. Returns the stages done. Raises MatrixError naming the failed stages (the others
    finished); after a Ctrl-C (SIGINT) or SIGTERM, passes a Ctrl-C on to every run, waits for
    them to stop, says what each left and exits 130."""
    env = dict(os.environ if env is None else env)
    logs = Path(root) / LOG_DIR
    logs.mkdir(parents=True, exist_ok=True)
    progress = progress or Progress(plan, {}, len(pool.slots), alone)
    todo, done, failed, running, started = list(plan.order), [], {}, {}, {}
    stop: list[float] = []      # when each Ctrl-C / SIGTERM came

    def start(stage: str, slots: list[Slot]) -> None:
        todo.remove(stage)
        slot = slots[0] if len(slots) == 1 else Slot.union(slots)
        path = logs / f"{stage.replace('/', '_')}.log"
        with path.open("wb") as out:
            # Its own process group: a Ctrl-C reaches the matrix, which passes it on to the runs.
            proc = subprocess.Popen(repro_cmd(stage), cwd=root, env=slot.env(env), stdout=out,
                                    stderr=subprocess.STDOUT, preexec_fn=slot.pin, start_new_session=True)
        running[proc] = (stage, slots, slot, path)
        started[stage] = time.monotonic()
        log(f"start  {stage} in {slot.label} (log {path.relative_to(root)})")

    def finished(proc) -> None:
        stage, slots, slot, path = running.pop(proc)
        took = time.monotonic() - started.pop(stage)
        for each in slots:
            pool.give_back(each)
        if proc.returncode == 0:
            done.append(stage)
            progress.done.add(stage)
            if stage in progress.estimates:
                progress.measured[stage] = took
            log(f"done   {stage} in {slot.label}, {duration(took)} {progress.line(started, time.monotonic())}")
        elif stop:
            failed[stage] = f"stopped: {last_line(path) or f'exit {proc.returncode}'} (log {path.relative_to(root)})"
        else:
            failed[stage] = f"exit {proc.returncode}, log {path}"
            log(f"FAILED {stage} in {slot.label}, {duration(took)}: {last_line(path) or f'exit {proc.returncode}'}"
                f" (log {path.relative_to(root)})")

    def epochs(now: float) -> None:
        for stage, _, slot, path in running.values():
            try:
                found = EPOCH.findall(path.read_text(errors="replace"))
            except OSError:
                continue
            if found and tuple(map(int, found[-1])) != progress.epochs.get(stage):
                k, n = map(int, found[-1])
                progress.epoch(stage, k, n)
                log(f"epoch  {stage} {k}/{n} in {slot.label} {progress.line(started, now)}")

    def on_signal(signum, frame):   # only noted here; the loop below acts on it (printing here could re-enter print)
        stop.append(time.monotonic())

    handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    last_read, passed_on = time.monotonic(), False
    try:
        while (todo and not stop) or running:
            if stop and not passed_on:
                passed_on = True
                log(f"stopping: each of the {len(running)} running stage(s) gets the Ctrl-C and up to "
                    f"{STOP_WAIT_S} s to save and exit (Ctrl-C again: kill them now)")
                for proc in running:
                    _signal_group(proc, signal.SIGINT)
            elif stop and (len(stop) > 1 or time.monotonic() - stop[0] > STOP_WAIT_S):
                for proc in running:
                    _signal_group(proc, signal.SIGKILL)
            if not stop:
                for stage in [s for s in todo if plan.waits[s] & set(failed)]:
                    todo.remove(stage)
                    failed[stage] = "not started: an upstream stage failed"
                ready = [s for s in todo if plan.waits[s] <= set(done)]
                for stage in [s for s in ready if s not in alone]:
                    slot = pool.take()
                    if slot is None:
                        break
                    start(stage, [slot])
                solo = [s for s in ready if s in alone]
                if solo and not running and len(solo) == len(ready):
                    slots = list(iter(pool.take, None))   # every slot no other matrix command holds
                    if slots:
                        start(solo[0], slots)
            time.sleep(POLL_S)
            for proc in [p for p in running if p.poll() is not None]:
                finished(proc)
            if time.monotonic() - last_read > LOG_POLL_S:
                last_read = time.monotonic()
                epochs(last_read)
    finally:
        for proc in running:    # an unexpected error here: the runs stop with us
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    if stop:
        interrupted(done, failed, todo, log)
    if failed:
        names = ", ".join(f"{s} ({why})" for s, why in failed.items())
        raise MatrixError(f"{len(failed)} stage(s) not done: {names}; {len(done)} done and recorded in dvc.lock; "
                          "fix the cause and run the same command again (a stopped run resumes from its "
                          "last saved epoch, if its log says one was saved)")
    return done


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


def interrupted(done: list, failed: dict, todo: list, log) -> None:
    """After a Ctrl-C: what is done (in dvc.lock), what each stopped run said it kept (its own
    last line: the matrix names a saved epoch only where the run says it saved one), what failed
    before, what never started; then exit 130 (a shell's status for a Ctrl-C)."""
    log(f"interrupted: {len(done)} stage(s) done and recorded in dvc.lock"
        + (f" ({', '.join(done)})" if 0 < len(done) <= 5 else ""))
    for stage, why in failed.items():
        log(f"  {stage} {why}")
    if todo:
        log(f"  {len(todo)} stage(s) not started")
    log("run the same command to go on: the done stages are up to date, so only the others run")
    raise SystemExit(130)


def launch_width(root: Path) -> int:
    """Processes per run (params.yaml's launch.num_processes): the devices one slot holds."""
    from ..core.config import load_params

    launch = load_params(Path(root) / "params.yaml").launch
    if launch.num_machines > 1:
        raise MatrixError(f"launch.num_machines is {launch.num_machines}: the matrix runs one-machine stages; "
                          "set launch.num_machines to 1 (and num_processes to the GPUs of one run)")
    return launch.num_processes


def device_name(slot: Slot) -> str:
    """What a run file's device_name would say for a run in this slot (launch.describe_device)."""
    import torch

    from ..training.launch import describe_device

    if slot.gpus:   # a GPU torch cannot see (MNIST_REPRO_GPUS on a host without CUDA) has no name
        return describe_device(torch.device("cuda", 0)) if torch.cuda.is_available() else f"gpu {slot.gpus[0]}"
    model = describe_device(torch.device("cpu")).rsplit(" (", 1)[0]
    return f"{model} ({len(slot.cores)} cores)"


def estimates(root: Path, plan: Plan, here: str) -> tuple[dict[str, float], str]:
    """({training stage of the plan: estimated seconds}, where the estimates come from) for runs
    on device `here` (a device_name)."""
    from ..core.config import load_params

    params = load_params(Path(root) / "params.yaml")
    recipes = stage_recipes(params)
    estimator = Estimator(committed_runs(root), params, here)
    found = {s: estimator(recipes[s]) for s in plan.order if s in recipes}
    known = {s: e for s, e in found.items() if e}
    devices = sorted({e.device for e in known.values()})
    source = f"committed runs' median wall times on {', '.join(devices) or 'no device'}"
    if devices != [here]:
        source += f"; a run here is {here}"
    missing = [s for s, e in found.items() if not e]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        source += f"; no committed run like {missing[0]}{more}"
    return {s: e.seconds for s, e in known.items()}, source


def preview(plan: Plan, seconds: dict[str, float], source: str, slots: list[Slot], log=print) -> None:
    """The lines before the first run: how many training runs, how long on this machine (one at a
    time, and in these slots), from what; and the faster ways."""
    training = [s for s in plan.order if "@" in s]
    if not training:
        return
    unknown = len([s for s in training if s not in seconds])
    if unknown == len(training):
        log(f"{len(training)} training run(s) pending (no committed run like them to estimate their time from)")
    else:
        log(f"{len(training)} training run(s) pending: about {duration(sum(seconds.values()))} one after another, "
            f"{duration(makespan(plan.order, plan.waits, seconds, len(slots), ALONE))} {len(slots)} at a time here"
            + (f" ({unknown} not estimated)" if unknown else ""))
        log(f"  from the {source}")
    look = "a look, not a result: `stages/train.py <variant> --quick` (README: Run one variant by hand)"
    if len(training) > 1:
        quick = min((s for s in training if s in seconds), key=seconds.get, default=training[0])
        log(f"  faster: fewer runs, e.g. `python -m mnist_repro.parallel.matrix run {quick}`"
            + (f" (about {duration(seconds[quick])})" if quick in seconds else ""))
        log(f"  or {look}")
    else:
        log(f"  faster: {look}")


def task_slot_label() -> str:
    """A Slurm array task's slot: its job, node and the devices Slurm gave it."""
    gpus = visible_gpus()
    where = f"gpu:{','.join(gpus)}" if gpus else f"cpu:{core_ranges(allowed_cores())}"
    job = f"{os.environ.get('SLURM_ARRAY_JOB_ID', '?')}_{os.environ.get('SLURM_ARRAY_TASK_ID', '?')}"
    return f"slurm:{job}@{os.environ.get('SLURMD_NODENAME', os.uname().nodename)}/{where}"


def read_stages(path: Path) -> list[str]:
    try:
        return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise MatrixError(f"{path}: no stage list; write it with `python -m mnist_repro.parallel.matrix prepare "
                          f"--out {path}`") from None


def run_serially(stages, root: Path) -> None:
    for stage in stages:
        if subprocess.run(repro_cmd(stage), cwd=root).returncode:
            raise MatrixError(f"{stage} failed; fix it and run the same command again")


def prepare(root: Path, out: Path, targets=(), log=print) -> list[str]:
    """Run the stages the array's stages wait on (download, ...) and write the array's stages to out."""
    plan = pending(root, targets)
    head = [s for s in plan.order if any(s in plan.waits[a] for a in plan.generated())]
    run_serially(head, root)
    plan = pending(root, targets)   # without the stages the head's unchanged outputs leave up to date
    array = plan.generated()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{s}\n" for s in array))
    rest = [s for s in plan.order if s not in array]
    log(f"{len(head)} upstream stage(s) done; {len(array)} array stage(s) in {out}: sbatch --array=0-{len(array) - 1}"
        f"; the gather step then runs {', '.join(rest) or 'nothing else'}")
    return array


def task(root: Path, stages_file: Path, index: int) -> int:
    stages = read_stages(stages_file)
    if not 0 <= index < len(stages):
        raise MatrixError(f"--index {index}: {stages_file} lists {len(stages)} stages (0..{len(stages) - 1}); "
                          f"submit the array as --array=0-{len(stages) - 1}")
    env = {**os.environ, "MNIST_REPRO_SLOT": task_slot_label()}
    return subprocess.run(repro_cmd(stages[index]), cwd=root, env=env).returncode


def gather(root: Path, stages_file: Path, log=print) -> None:
    """Refuse while a stage of the array is not done (never train here); else `dvc repro` the rest."""
    stages = read_stages(stages_file)
    left = pending(root).generated()
    listed = [s for s in left if s in stages]
    if listed:
        indices = ",".join(str(stages.index(s)) for s in listed)
        raise MatrixError(f"array stage(s) not done: {', '.join(listed)}; see their task logs, then rerun them "
                          f"with `sbatch --array={indices} slurm/matrix.sbatch` (MATRIX_STAGES={stages_file}) "
                          "and gather again")
    if left:
        raise MatrixError(f"stage(s) not in {stages_file} are not done: {', '.join(left)}; submit them with "
                          "slurm/matrix.sh, which gathers after them")
    if subprocess.run([*DVC, "--wait-for-lock", "repro"], cwd=root).returncode:
        raise MatrixError("`dvc repro` of the stages after the array failed; see its output above")
    log("gathered: every stage is recorded in dvc.lock")


def follow_up(root: Path, done: list[str], targets) -> Plan | None:
    """After a run of some targets: the stages downstream of the training runs it finished
    (compare, report) that are stale and wait on nothing else that is stale, as a plan; None if none."""
    runs = {s for s in done if "@" in s}
    if not targets or not runs:
        return None
    plan = pending(root)
    after = {s for s in plan.order if "@" not in s and plan.upstream[s] & runs}
    ready = {s for s in after if not plan.waits[s] - after}
    if not ready:
        return None
    return Plan([s for s in plan.order if s in ready], {s: plan.waits[s] & ready for s in ready}, plan.upstream)


def report_stale(root: Path, done: list[str], log=print) -> None:
    """The last line: what this command recorded and what `dvc status` still reports stale."""
    left = stale(root)
    head = f"done: {len(done)} stage(s) recorded in dvc.lock"
    if not left:
        log(f"{head}; `dvc status`: up to date")
        return
    shown = ", ".join(left[:6]) + (f" and {len(left) - 6} more" if len(left) > 6 else "")
    log(f"{head}; still stale (`dvc status`): {shown}; `python -m mnist_repro.parallel.matrix run` brings them up to date")


def check_jobs(jobs: int | None, slots: list[Slot]) -> list[Slot]:
    if jobs is None:
        return slots
    if not 1 <= jobs <= len(slots):
        raise SlotError(f"--jobs {jobs}: this host has {len(slots)} slot(s) "
                        f"({', '.join(s.label for s in slots)}); use 1 to {len(slots)}")
    return slots[:jobs]


def run(root: Path, targets, *, jobs=None, cores_per_slot=None, lock_dir=None, dry=False, log=print) -> None:
    """`matrix run`: check the slot settings, plan, say the plan's size and time, run it, then
    compare and report when this run finished what they wait on, and say what is still stale."""
    if lock_dir is not None:
        check_lock_dir(lock_dir)
    slots = check_jobs(jobs, host_slots(launch_width(root), cores_per_slot=cores_per_slot))
    here = []
    plan = pending(root, targets, meanwhile=lambda: here.append(device_name(slots[0])))
    if not plan.order:
        log("nothing to run: `dvc status` reports every stage" + (" of the targets" if targets else "")
            + " up to date")
        return
    seconds, source = estimates(root, plan, here[0])
    log(f"{len(plan.order)} stage(s) to run, {len(slots)} at a time in {', '.join(s.label for s in slots)}")
    preview(plan, seconds, source, slots, log)
    if dry:
        width = max(map(len, plan.order))
        for stage in plan.order:
            waits = sorted(plan.waits[stage], key=plan.order.index)
            after = ", ".join(waits) if len(waits) <= 3 else f"{len(waits)} stages ({waits[0]}, ...)"
            guess = f"about {duration(seconds[stage])}" if stage in seconds else ""
            log((f"  {stage:<{width}}  {guess:<15}" + (f"  after {after}" if waits else "")).rstrip())
        return
    pool = SlotPool(slots, lock_dir)
    done = run_plan(plan, pool, root, progress=Progress(plan, seconds, len(slots)), log=log)
    more = follow_up(root, done, targets)
    if more:
        log(f"then {', '.join(more.order)}: every stage they depend on is up to date now")
        done += run_plan(more, pool, root, log=log)
    report_stale(root, done, log)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mnist_repro.parallel.matrix", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_ = sub.add_parser("run", help="every pending stage on this host, k at a time, each in its own slot")
    run_.add_argument("targets", nargs="*", help="stages to bring up to date with their upstream (default: all)")
    run_.add_argument("-j", "--jobs", type=int, help="runs at once (default: every slot: each GPU, or each core)")
    run_.add_argument("--cores-per-slot", type=int, help="CPU host: cores per run (default: one per process)")
    run_.add_argument("--lock-dir", type=Path, help="an existing directory for the slots' lock files, the same for "
                      "every matrix command on this host (default: one per user and host)")
    run_.add_argument("--dry", action="store_true", help="print the plan, its estimate and the slots, run nothing")
    prep = sub.add_parser("prepare", help="Slurm: upstream stages now, the array's stage list into --out")
    prep.add_argument("targets", nargs="*")
    prep.add_argument("--out", type=Path, required=True)
    one = sub.add_parser("task", help="Slurm array task: the --index-th stage of --stages")
    one.add_argument("--stages", type=Path, required=True)
    one.add_argument("--index", type=int, required=True)
    end = sub.add_parser("gather", help="Slurm: check the array's stages, then `dvc repro` the rest")
    end.add_argument("--stages", type=Path, required=True)
    parser.add_argument("--root", type=Path, default=Path("."), help="the project checkout (default: here)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.command == "task":
        raise SystemExit(task(root, args.stages, args.index))
    if args.command == "prepare":
        prepare(root, args.out, args.targets)
    elif args.command == "gather":
        gather(root, args.stages)
    else:
        run(root, args.targets, jobs=args.jobs, cores_per_slot=args.cores_per_slot, lock_dir=args.lock_dir,
            dry=args.dry)


if __name__ == "__main__":
    from ..core.cli import run as cli_run

    cli_run(main)
