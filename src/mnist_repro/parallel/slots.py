"""Slots of one host: a GPU each, or a disjoint set of CPU cores each, held through a lock file.

A run started in a slot sees only that slot: ``CUDA_VISIBLE_DEVICES`` names its GPUs
(empty on a CPU slot) and its CPU affinity is the slot's cores, so torch's thread
count (``train.cpu_threads: 0`` = the cores this process may use) follows the slot
and no two runs share a core. ``MNIST_REPRO_SLOT`` carries the slot's label into the
run file.

A slot is taken with ``flock`` on ``<lock dir>/<label>.lock``: two matrix commands on
one host (two checkouts, or a second terminal) never hand out the same slot, and a
killed holder frees its slots without cleanup, since the kernel drops its locks.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError

# Test seam and override: the device ids to hand out ("0,1"; "" = none), instead of
# the GPUs CUDA_VISIBLE_DEVICES names or torch counts.
GPUS_ENV = "MNIST_REPRO_GPUS"
SLOT_ENV = "MNIST_REPRO_SLOT"


class SlotError(UserError):
    """The host cannot be split into the slots asked for."""


@dataclass(frozen=True)
class Slot:
    label: str               # e.g. "gpu:0", "gpu:2,3", "cpu:0-3"; recorded in the run file
    cores: tuple[int, ...]   # CPU affinity of the run
    gpus: tuple[str, ...]    # CUDA_VISIBLE_DEVICES of the run ((): no GPU)

    def env(self, base: dict) -> dict:
        """base with this slot's devices, thread count and label."""
        return {**base, "CUDA_VISIBLE_DEVICES": ",".join(self.gpus), SLOT_ENV: self.label,
                "OMP_NUM_THREADS": str(len(self.cores)), "MKL_NUM_THREADS": str(len(self.cores))}

    @classmethod
    def union(cls, slots: list["Slot"]) -> "Slot":
        """One slot of several: every core and GPU of them (a run that must have the host to itself)."""
        cores = tuple(sorted({c for s in slots for c in s.cores}))
        gpus = tuple(g for s in slots for g in s.gpus)
        return cls("gpu:" + ",".join(gpus) if gpus else f"cpu:{core_ranges(cores)}", cores, gpus)

    def pin(self) -> None:
        """Restrict the calling process (a child before exec) to this slot's cores."""
        os.sched_setaffinity(0, self.cores)


def core_ranges(cores) -> str:
    """(0, 1, 2, 5) -> "0-2,5"."""
    parts, cores = [], sorted(cores)
    start = prev = cores[0]
    for c in [*cores[1:], None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        parts.append(f"{start}-{prev}" if prev > start else f"{start}")
        if c is not None:
            start = prev = c
    return ",".join(parts)


def visible_gpus() -> tuple[str, ...]:
    """The GPUs this process may hand out: $MNIST_REPRO_GPUS, else CUDA_VISIBLE_DEVICES's
    entries, else as many as torch counts (without initialising CUDA)."""
    for name in (GPUS_ENV, "CUDA_VISIBLE_DEVICES"):
        if name in os.environ:
            return tuple(g.strip() for g in os.environ[name].split(",") if g.strip())
    import torch

    return tuple(str(i) for i in range(torch.cuda.device_count()))


def allowed_cores() -> tuple[int, ...]:
    return tuple(sorted(os.sched_getaffinity(0)))


def host_slots(width: int, *, gpus: tuple[str, ...] | None = None, cores: tuple[int, ...] | None = None,
               cores_per_slot: int | None = None) -> list[Slot]:
    """The host split into slots for runs of `width` processes each (launch.num_processes).

    With GPUs: one slot per `width` GPUs, each also given an equal share of the cores
    (its data loading and launcher). Without: `cores_per_slot` cores per slot (default:
    one per process, `width`), consecutive so a slot stays on one socket where it can."""
    gpus = visible_gpus() if gpus is None else tuple(gpus)
    cores = allowed_cores() if cores is None else tuple(sorted(cores))
    if len(set(gpus)) < len(gpus):
        raise SlotError(f"GPUs {','.join(gpus)}: a GPU is named twice; name each once in {GPUS_ENV} "
                        "or CUDA_VISIBLE_DEVICES")
    if cores_per_slot is not None and cores_per_slot < 1:
        raise SlotError(f"--cores-per-slot {cores_per_slot}: a run needs at least 1 core; use 1 to {len(cores)}, "
                        "or leave it out for one core per process")
    if gpus and cores_per_slot is not None:
        raise SlotError(f"--cores-per-slot {cores_per_slot}: this host's slots are its GPUs ({','.join(gpus)}), each "
                        f"with an equal share of the cores; leave it out, or set {GPUS_ENV}= (empty) for CPU slots")
    if gpus:
        if len(gpus) < width:
            raise SlotError(f"launch.num_processes is {width} but this host shows {len(gpus)} GPU(s); "
                            f"set launch.num_processes to at most {len(gpus)} or name more with {GPUS_ENV}")
        n = len(gpus) // width
        share = max(1, len(cores) // n)
        return [Slot("gpu:" + ",".join(gpus[i * width:(i + 1) * width]),
                     cores[(i * share) % len(cores):][:share] or cores, tuple(gpus[i * width:(i + 1) * width]))
                for i in range(n)]
    per = width if cores_per_slot is None else cores_per_slot
    if per < width:
        raise SlotError(f"--cores-per-slot {per} is fewer than launch.num_processes ({width}) processes per run; "
                        f"give each run at least {width} cores")
    if per > len(cores):
        raise SlotError(f"--cores-per-slot {per} is more than the {len(cores)} cores this process may use; "
                        f"use at most {len(cores)}")
    return [Slot(f"cpu:{core_ranges(cores[i * per:(i + 1) * per])}", cores[i * per:(i + 1) * per], ())
            for i in range(len(cores) // per)]


def check_lock_dir(path: Path) -> None:
    """A lock directory a user names must exist and be writable: a typo would otherwise give
    this command slots of its own, shared with no other matrix command on the host."""
    path = Path(path)
    if not path.exists():
        raise SlotError(f"--lock-dir {path}: no such directory; create it (every matrix command on this host "
                        f"must name the same one) or leave it out for {default_lock_dir()}")
    if not path.is_dir():
        raise SlotError(f"--lock-dir {path}: not a directory; name a directory, or leave it out for "
                        f"{default_lock_dir()}")
    if not os.access(path, os.W_OK | os.X_OK):
        raise SlotError(f"--lock-dir {path}: this user cannot create files there; name a writable directory, "
                        f"or leave it out for {default_lock_dir()}")


def default_lock_dir() -> Path:
    """One directory per user and host: every checkout on the host shares its slots."""
    return Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"mnist_repro_slots_{os.getuid()}"


class SlotPool:
    """Hands out free slots, each held by an flock until given back (or this process dies)."""

    def __init__(self, slots: list[Slot], lock_dir: Path | None = None):
        self.slots = list(slots)
        if lock_dir is None:
            self.lock_dir = default_lock_dir()
            self.lock_dir.mkdir(parents=True, exist_ok=True)
        else:
            check_lock_dir(lock_dir)
            self.lock_dir = Path(lock_dir)
        self._held: dict[str, int] = {}

    def take(self) -> Slot | None:
        """A free slot, now locked by this process; None when every slot is busy."""
        for slot in self.slots:
            if slot.label in self._held:
                continue
            name = slot.label.replace(":", "_").replace(",", "+") + ".lock"
            fd = os.open(self.lock_dir / name, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:   # another matrix command on this host runs in it
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._held[slot.label] = fd
            return slot
        return None

    def give_back(self, slot: Slot) -> None:
        fd = self._held.pop(slot.label)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    @property
    def busy(self) -> int:
        return len(self._held)
