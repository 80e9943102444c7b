"""Resume state: the two newest complete epochs of a run, on every node, and the epoch
every process agrees to resume from.

A state is Accelerate's save_state (model, optimiser and RNG states, loaded with
weights_only=True) in ``node-<k>/epoch-<E>``; the manifest ``node-<k>/run.json`` names
the newest complete state and the one before it, each with the history so far and
the scheduler's state as JSON (nothing to unpickle), and a fingerprint of the run's
settings: a state saved under other params is never resumed. Each node keeps its own
copy, written by its local main process, so nodes with separate disks can all resume;
all processes resume from the newest epoch every node holds (``agreed_resume``), so a
kill between two nodes' manifest writes costs one epoch, not the run. A state that
cannot be read is reported in one line and the run starts over. A finished run
deletes its states and leaves only a finished manifest.

Where: a directory the caller names (``--checkpoint DIR``), or, for the pipeline's stages
(``--resume``), ``<home>/<variant>-seed<seed>/<fingerprint>/`` with home
``$MNIST_REPRO_CHECKPOINTS``, else ``checkpoints/`` at the DVC project's root (``$DVC_ROOT``,
which DVC points at the workspace also inside ``dvc exp run --temp``'s temporary copy), so
the state outlives that copy and runs of other settings never share a folder.

Each state also keeps the run's segments so far (one per session: its epochs, CPU threads,
slot, device and times), which the run file records. A resume whose CPU thread count
differs from the saved segments' stops (the count changes the numbers) unless
``$MNIST_REPRO_RESUME_ANY_THREADS=1`` allows it, which the new segment records.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from accelerate import Accelerator
from accelerate.utils import gather, set_seed

from ..core.config import TrainConfig, VariantConfig
from ..core.errors import ParamsError
from ..core.files import write_json
from .launch import num_machines

KEEP = 2  # complete states kept per node: a node one manifest behind still shares an epoch
HOME_ENV = "MNIST_REPRO_CHECKPOINTS"          # where --resume keeps its states (default: checkpoints/)
THREADS_ENV = "MNIST_REPRO_RESUME_ANY_THREADS"  # =1: resume although the CPU thread count changed


@dataclass
class Checkpoint:
    root: Path
    fingerprint: str
    node: int = 0
    saved: dict | None = field(default=None, repr=False)  # this run's newest state, once saved or resumed
    keyed: bool = False  # root is this run's own folder (--resume): a finished run removes it
    latest: ClassVar["Checkpoint | None"] = None  # the last one this process opened: what a Ctrl-C reports

    def __post_init__(self):
        Checkpoint.latest = self

    @property
    def directory(self) -> Path:
        return self.root / f"node-{self.node}"

    @property
    def manifest(self) -> Path:
        return self.directory / "run.json"

    def states(self, log=print) -> list[dict]:
        """This node's complete states of this run, newest first: each a dict of state
        (folder name), history, wall_seconds, scheduler and segments. A manifest that cannot
        be read is reported (one line) and offers nothing."""
        if not self.manifest.exists():
            return []
        try:
            saved = json.loads(self.manifest.read_text())
            if saved.get("finished") or saved.get("fingerprint") != self.fingerprint:
                return []
            states = [saved, *([saved["previous"]] if saved.get("previous") else [])]
            states = [{key: s[key] for key in STATE_KEYS} for s in states]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log(f"warning: {self.manifest}: not a readable resume manifest ({type(e).__name__}: "
                f"{_first_line(e)}); starting over")
            return []
        return [s for s in states if (self.directory / s["state"]).is_dir()]

    def save(self, accelerator: Accelerator, history: list, wall_seconds: float, scheduler, segments: list) -> None:
        """Save this epoch's state; the manifest then names it and the state before it."""
        state = {"state": f"epoch-{len(history)}", "history": history, "wall_seconds": wall_seconds,
                 "scheduler": scheduler.state_dict() if scheduler is not None else None,
                 "segments": copy.deepcopy(segments)}
        accelerator.save_state(str(self.directory / state["state"]))
        accelerator.wait_for_everyone()
        if accelerator.is_local_main_process:
            write_json(self.manifest, {"fingerprint": self.fingerprint, **state, "previous": self.saved})
            self._prune(keep={state["state"], (self.saved or {}).get("state")})
        self.saved = {**state, "history": list(history)}
        accelerator.wait_for_everyone()

    def restore(self, accelerator: Accelerator, state: dict, model, optimizer, scheduler, seed: int) -> bool:
        """Load ``state`` on every process. If any process cannot, say so in one line and
        put every process back to its fresh start (weights, optimiser, scheduler, RNG), as
        if nothing had been saved. Returns whether the state was loaded."""
        fresh = [copy.deepcopy(obj.state_dict()) for obj in (model, optimizer, scheduler) if obj is not None]
        folder = self.directory / state["state"]
        try:
            accelerator.load_state(str(folder))
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            problem = None
        except Exception as e:  # a damaged state: whatever the loader raised, start over
            problem = f"{type(e).__name__}: {_first_line(e)}"
        failed = gather(torch.tensor([int(problem is not None)], device=accelerator.device)).tolist()
        if not any(failed):
            self.saved = state
            return True
        if accelerator.process_index == failed.index(1):  # one line, from the first process that failed
            print(f"warning: {folder}: the saved state cannot be loaded ({problem}); starting over from epoch 1",
                  flush=True)
        for obj, saved in zip((o for o in (model, optimizer, scheduler) if o is not None), fresh):
            obj.load_state_dict(saved)
        set_seed(seed, device_specific=True)
        return False

    def finish(self, accelerator: Accelerator) -> None:
        """No state is left to resume: a named folder keeps a finished manifest, a --resume
        folder (this run's own) is removed."""
        if accelerator.is_local_main_process:
            if self.keyed:
                shutil.rmtree(self.directory, ignore_errors=True)
                for folder in (self.root, self.root.parent):  # empty unless another node or run uses it
                    try:
                        folder.rmdir()
                    except OSError:
                        break
                return
            write_json(self.manifest, {"fingerprint": self.fingerprint, "finished": True})
            self._prune(keep=set())

    def _prune(self, keep: set) -> None:
        for old in self.directory.glob("epoch-*"):
            if old.name not in keep:
                shutil.rmtree(old)


STATE_KEYS = ("state", "history", "wall_seconds", "scheduler", "segments")


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def agreed_resume(checkpoint: Checkpoint, accelerator: Accelerator) -> dict | None:
    """The state every process resumes from: the newest epoch whose state every node holds.

    Every process reads its node's states and all compare; with no epoch in common all
    start over together, since one node resuming while another starts at epoch 1 would
    wait forever in mismatched collectives.
    """
    log = accelerator.print if accelerator.num_processes > 1 else print
    mine = checkpoint.states(log=print if accelerator.is_local_main_process else lambda msg: None)
    if accelerator.num_processes == 1:
        return mine[0] if mine else None
    epochs = [len(s["history"]) for s in mine] + [0] * KEEP
    held = gather(torch.tensor(epochs[:KEEP], device=accelerator.device)).view(accelerator.num_processes, KEEP)
    common = set.intersection(*(set(row) - {0} for row in held.tolist()))
    newest = int(held.max())
    chosen = max(common, default=0)
    if newest and chosen < newest:
        log(f"a node lacks the state of epoch {newest} in {checkpoint.root}/node-*: " + (
            f"resuming from epoch {chosen}, the newest every node holds" if chosen else "starting over on every node"))
    return next(s for s in mine if len(s["history"]) == chosen) if chosen else None


def run_fingerprint(cfg: TrainConfig, variant: VariantConfig, seed: int, accelerator: Accelerator) -> str:
    train = asdict(cfg)
    del train["cpu_threads"]  # speed only: a run may resume with another thread count
    settings = {"train": train, "variant": asdict(variant), "seed": seed,
                "processes": accelerator.num_processes, "machines": num_machines(accelerator),
                "device": accelerator.device.type, "mixed_precision": accelerator.mixed_precision}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def resume_home() -> Path:
    """Where --resume keeps states: $MNIST_REPRO_CHECKPOINTS, else checkpoints/ at the DVC
    project's root (the workspace, also from inside `dvc exp run --temp`'s copy), else here."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV])
    root = Path(os.environ.get("DVC_ROOT") or ".")
    return (Path() if root.resolve() == Path.cwd().resolve() else root) / "checkpoints"  # relative where it can


def keyed_root(home: Path, variant: str, seed: int, fingerprint: str) -> Path:
    """A run's own folder under home: one per variant and seed, then one per settings."""
    return Path(home) / f"{variant}-seed{seed}" / fingerprint


def check_threads(state: dict, threads: int, accelerator: Accelerator, root: Path, setting: int) -> str | None:
    """Stop a CPU resume whose torch thread count differs from the saved segments' last
    (it changes the numbers: docs/reproducibility.md), unless $MNIST_REPRO_RESUME_ANY_THREADS=1;
    then return the override to record. Every process checks its node's state and all
    agree, so all stop together. ``setting`` is train.cpu_threads, for the message."""
    if accelerator.device.type != "cpu":
        return None
    pair = torch.tensor([[state["segments"][-1]["threads"], threads]], device=accelerator.device)
    pairs = gather(pair) if accelerator.num_processes > 1 else pair
    differ = [(before, now) for before, now in pairs.tolist() if before != now]
    if not differ:
        return None
    before, now = differ[0]
    done = len(state["history"])
    if os.environ.get(THREADS_ENV) == "1":
        accelerator.print(f"warning: epochs 1-{done} ran on {before} CPU thread(s), the rest on {now} "
                          f"({THREADS_ENV}=1, in the run file)")
        return f"{THREADS_ENV}=1"
    count = f"train.cpu_threads: {setting}" if setting else "train.cpu_threads: 0, this machine's cores / processes"
    raise ParamsError(
        f"{root}: epochs 1-{done} ran on {before} CPU thread(s) per process, this run has {now} ({count}), "
        f"which changes the numbers; resume with train.cpu_threads: {before}, delete {root} to start over, "
        f"or set {THREADS_ENV}=1 to mix them (recorded in the run file)")


def interrupted_line(rerun: str, kept: bool) -> str:
    """The one line after a Ctrl-C of a training run, true of what ``rerun`` then does: it names
    saved epochs only when a state of this run's settings is on disk (what the rerun resumes).
    ``kept``: whether the run was asked to keep resume state (--checkpoint or --resume)."""
    if not kept:
        return f"interrupted: nothing was saved (no --checkpoint or --resume); rerun {rerun} to start again"
    ckpt = Checkpoint.latest
    if ckpt is None:  # stopped before the run knew its settings' fingerprint, so before any epoch
        return f"interrupted before the first epoch began; rerun {rerun}"
    states = ckpt.states(log=lambda message: None)
    if not states:
        return f"interrupted before any epoch was saved, so nothing will resume; rerun {rerun} to start again"
    done = len(states[0]["history"])
    dvc_root = os.environ.get("DVC_ROOT")
    if dvc_root and Path(ckpt.root).resolve().is_relative_to(Path(dvc_root).resolve() / ".dvc" / "tmp"):
        return (f"interrupted: epochs 1-{done} were saved in {ckpt.root}, inside the temporary copy that "
                f"`dvc exp run --temp` deletes, so a rerun starts over; --resume keeps them at the project root")
    return f"interrupted: epochs 1-{done} are saved in {ckpt.root}; rerun {rerun} to resume after epoch {done}"
