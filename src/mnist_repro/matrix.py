"""The pipeline's pending stages, run k at a time in one workspace, each pinned to its own slot.

    python -m mnist_repro.matrix run                 # this host: every GPU, or every core, busy
    python -m mnist_repro.matrix run --dry           # the plan: stages, what each waits for, the slots
    python -m mnist_repro.matrix prepare --out F     # Slurm: upstream stages now, the array's stages in F
    python -m mnist_repro.matrix task --stages F --index I   # Slurm array task I: one stage
    python -m mnist_repro.matrix gather --stages F   # Slurm: check every array stage, then the rest

DVC does the work: every stage runs as ``dvc --wait-for-lock repro -s <stage>`` in the
one checkout. DVC releases the repo lock while a stage's command runs and guards each
dep and out with a per-path read/write lock, so independent stages run side by side and
each records its own dvc.lock entry (read-modify-write under the repo lock). What is
home-made is only which stage runs when (pending stages from `dvc status` and everything
downstream of them, started once their pending upstream stages are done, as `dvc repro`
orders them) and where (slots.py). A stage that fails stops only the stages downstream
of it; rerunning the command reruns it, resuming from its checkpoint.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .slots import Slot, SlotPool, allowed_cores, core_ranges, host_slots, visible_gpus

DVC = (sys.executable, "-m", "dvc")
LOG_DIR = Path(".dvc/tmp/matrix")   # per-stage logs (git-ignored with the rest of .dvc/tmp)
POLL_S = 0.2
# Stages that time something: run with every slot's devices, when nothing else runs.
ALONE = ("benchmark",)


class MatrixError(UserError):
    """Stages of the matrix failed or are not done."""


@contextmanager
def _inside(root: Path):
    """DVC names stages relative to the working directory: plan from the project root."""
    before = Path.cwd()
    os.chdir(root)
    try:
        yield
    finally:
        os.chdir(before)


@dataclass
class Plan:
    order: list[str]                                          # pending stages, dvc.yaml order
    waits: dict[str, set[str]] = field(default_factory=dict)  # stage -> pending stages upstream of it

    def generated(self) -> list[str]:
        """Stages made by foreach/matrix (train@..., seed@...: the matrix) that wait on no other such stage."""
        return [s for s in self.order if "@" in s and not any("@" in w for w in self.waits[s])]


def pending(root: Path, targets=()) -> Plan:
    """What `dvc repro [targets]` would run: stages `dvc status` reports changed, and every stage
    downstream of one, each with the pending stages it must wait for."""
    import networkx as nx
    from dvc.repo import Repo

    with _inside(root), Repo(".") as repo:
        graph = repo.index.graph          # edges run from a stage to the stages it depends on
        stages = {s.addressing: s for s in repo.index.stages}
        scope = set(stages)
        if targets:
            unknown = [t for t in targets if t not in stages]
            if unknown:
                raise MatrixError(f"{unknown[0]}: no such stage in dvc.yaml; `dvc stage list` names them")
            scope = {t for t in targets} | {u.addressing for t in targets for u in nx.descendants(graph, stages[t])}
        changed = {name for name in repo.status(targets=list(scope)) if name in scope}
        todo = set(changed)
        for name in changed:
            todo |= {d.addressing for d in nx.ancestors(graph, stages[name])} & scope
        order = [name for name in stages if name in todo]
        waits = {name: {u.addressing for u in nx.descendants(graph, stages[name])} & todo for name in order}
    return Plan(order, waits)


def repro_cmd(stage: str) -> list[str]:
    """One stage, no upstream (the plan ran it), waiting for DVC's repo lock rather than failing on it."""
    return [*DVC, "--wait-for-lock", "repro", "--single-item", stage]


def run_plan(plan: Plan, pool: SlotPool, root: Path, env: dict | None = None, log=print, alone=ALONE) -> None:
    """Start every stage of the plan whose upstream is done in a free slot, until all are done
    or stopped; a stage in `alone` waits until nothing else is ready or running, then gets every
    slot. Raises MatrixError naming the failed stages (the others finished)."""
    env = dict(os.environ if env is None else env)
    logs = Path(root) / LOG_DIR
    logs.mkdir(parents=True, exist_ok=True)
    todo, done, failed, running = list(plan.order), set(), {}, {}

    def start(stage: str, slots: list[Slot]) -> None:
        todo.remove(stage)
        slot = slots[0] if len(slots) == 1 else Slot.union(slots)
        path = logs / f"{stage.replace('/', '_')}.log"
        with path.open("wb") as out:
            proc = subprocess.Popen(repro_cmd(stage), cwd=root, env=slot.env(env), stdout=out,
                                    stderr=subprocess.STDOUT, preexec_fn=slot.pin)
        running[proc] = (stage, slots, slot, path, time.monotonic())
        log(f"start  {stage} in {slot.label} (log {path.relative_to(root)})")

    try:
        while todo or running:
            for stage in [s for s in todo if plan.waits[s] & set(failed)]:
                todo.remove(stage)
                failed[stage] = "not started: an upstream stage failed"
            ready = [s for s in todo if plan.waits[s] <= done]
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
                stage, slots, slot, path, began = running.pop(proc)
                for each in slots:
                    pool.give_back(each)
                took = f"{time.monotonic() - began:.0f} s"
                if proc.returncode == 0:
                    done.add(stage)
                    log(f"done   {stage} in {slot.label}, {took}")
                else:
                    failed[stage] = f"exit {proc.returncode}, log {path}"
                    log(f"FAILED {stage} in {slot.label}, {took}: exit {proc.returncode}, see {path}")
    finally:
        for proc in running:    # interrupted: the runs stop with us (each resumes from its checkpoint)
            proc.terminate()
        for proc in running:
            proc.wait()
    if failed:
        names = ", ".join(f"{s} ({why})" for s, why in failed.items())
        raise MatrixError(f"{len(failed)} stage(s) not done: {names}; fix the cause and run the same command "
                          "again (finished stages are kept, a killed run resumes from its checkpoint)")


def launch_width(root: Path) -> int:
    """Processes per run (params.yaml's launch.num_processes): the devices one slot holds."""
    from .config import load_params

    launch = load_params(Path(root) / "params.yaml").launch
    if launch.num_machines > 1:
        raise MatrixError(f"launch.num_machines is {launch.num_machines}: the matrix runs one-machine stages; "
                          "set launch.num_machines to 1 (and num_processes to the GPUs of one run)")
    return launch.num_processes


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
        raise MatrixError(f"{path}: no stage list; write it with `python -m mnist_repro.matrix prepare "
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mnist_repro.matrix", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="every pending stage on this host, k at a time, each in its own slot")
    run.add_argument("targets", nargs="*", help="stages to bring up to date with their upstream (default: all)")
    run.add_argument("-j", "--jobs", type=int, help="runs at once (default: every slot: each GPU, or each core)")
    run.add_argument("--cores-per-slot", type=int, help="CPU host: cores per run (default: one per process)")
    run.add_argument("--lock-dir", type=Path, help="where the slots' lock files live (default: one per host)")
    run.add_argument("--dry", action="store_true", help="print the plan and the slots, run nothing")
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
        slots = host_slots(launch_width(root), cores_per_slot=args.cores_per_slot)
        if args.jobs is not None:
            if not 1 <= args.jobs <= len(slots):
                raise MatrixError(f"--jobs {args.jobs}: this host has {len(slots)} slot(s) "
                                  f"({', '.join(s.label for s in slots)}); use 1 to {len(slots)}")
            slots = slots[:args.jobs]
        plan = pending(root, args.targets)
        print(f"{len(plan.order)} stage(s) to run, {len(slots)} at a time in {', '.join(s.label for s in slots)}")
        if args.dry:
            for stage in plan.order:
                print(f"  {stage}" + (f"  (after {', '.join(sorted(plan.waits[stage]))})" if plan.waits[stage] else ""))
            return
        run_plan(plan, SlotPool(slots, args.lock_dir), root)
        print("done: every stage recorded in dvc.lock")


if __name__ == "__main__":
    from .cli import run as cli_run

    cli_run(main)
