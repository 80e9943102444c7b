"""Which standard PyTorch (and C library) means make our CPU training step faster? Each alone, side by side.

    python research/speed_levers.py --out research/speed_levers.json            # the run committed
    python research/speed_levers.py --variants skeleton --steps 2 --blocks 2 --repeats 2 --rounds 2 \
        --paths eager compile_step --threads 1 --out /tmp/levers.json            # a smoke test

Everything runs in worker processes, one thread count each (inductor's C++ kernels fix their
OpenMP thread count when they are generated), in two phases per thread count:

  allocator  --rounds rounds of, per variant, two workers that train that variant's eager path
             alone, one with glibc's malloc as a process starts and one after
             mnist_repro.training.speed.keep_freed_memory (a process cannot go back to the first, and what
             glibc's adaptive thresholds do depends on everything the process allocated before,
             so each worker trains what a training run trains: one variant, one path),
             alternating which goes first.
  levers     --repeats workers, all after keep_freed_memory (the allocator phase's winner, so
             every path runs as a training run would), each training every path below: per
             variant each path gets its own model and optimiser from the same seed and is warmed
             up (first step: torch.compile traces and compiles; second step; one short batch, a
             new batch size that compiles once more), then the paths take turns over the same
             --steps full batches, --blocks times, the order rotating, so whatever else runs on
             the machine hits them all alike.

Reported (summary), for wall and process CPU time (the CPU time counts only while the process
runs, so it moves less when other jobs share the cores): the allocator's ratio (default /
kept, per round, median) with page faults per step; per path the median step time and the
median over blocks of eager's time / this path's in the same block; the warm-up of the first
levers worker (a cold inductor cache: a first run) and of the later ones (the cache on disk:
every later run). Each worker's record is appended to <out>.partial.jsonl as it finishes.
Paths:

  eager               our training step as train_one_epoch runs it: channels_last (train.channels_last
                      true), for-loop SGD/Adam, per-step bookkeeping on the device (no host sync)
  eager_nchw          the same with channels_last off
  eager_foreach       the optimiser's foreach implementation
  eager_fused         the optimiser's fused implementation (one kernel for every parameter)
  eager_no_bookkeeping  no per-step loss/accuracy/finite accumulation: what those few ops cost
  compile_model       torch.compile(model) (inductor, mode default): what launch.dynamo_backend does
  compile_model_nchw  the same with channels_last off
  compile_step        torch.compile of the whole forward half of the step: batch preparation and
                      augmentation, the model, the loss and the bookkeeping (backward runs the
                      compiled backward graph AOTAutograd made with it)
  compile_step_fused  compile_step with the fused optimiser
  compile_step_opt    compile_step with the optimiser step compiled too (a tensor lr, as torch's
                      docs ask for a compiled step under an LR scheduler)
  compile_step_autotune  compile_step in mode max-autotune-no-cudagraphs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mnist_repro.core.config import load_params  # noqa: E402
from mnist_repro.core.data import download_mnist  # noqa: E402
from mnist_repro.training.device_data import global_batches, load_datasets, prepare_images  # noqa: E402
from mnist_repro.training.launch import describe_device  # noqa: E402
from mnist_repro.core.models import build_model  # noqa: E402
from mnist_repro.training.speed import keep_freed_memory  # noqa: E402
from mnist_repro.training.train import build_scheduler  # noqa: E402

PATHS = {
    # name: (compile: None | "model" | "step", channels_last, optimiser impl, compile mode, bookkeeping)
    "eager": (None, True, "for-loop", None, True),
    "eager_nchw": (None, False, "for-loop", None, True),
    "eager_foreach": (None, True, "foreach", None, True),
    "eager_fused": (None, True, "fused", None, True),
    "eager_no_bookkeeping": (None, True, "for-loop", None, False),
    "compile_model": ("model", True, "for-loop", "default", True),
    "compile_model_nchw": ("model", False, "for-loop", "default", True),
    "compile_step": ("step", True, "for-loop", "default", True),
    "compile_step_fused": ("step", True, "fused", "default", True),
    "compile_step_opt": ("step", True, "compiled", "default", True),
    "compile_step_autotune": ("step", True, "for-loop", "max-autotune-no-cudagraphs", True),
}
DEFAULT_PATHS = [p for p in PATHS if p not in ("compile_step_autotune", "compile_model_nchw")]
ALLOCS = ("default", "keep")


def optimizer_for(model, variant, impl: str):
    """build_optimizer's optimiser with the implementation asked for."""
    kwargs = {"foreach": {"foreach": True}, "fused": {"fused": True}}.get(impl, {"foreach": False})
    lr = torch.tensor(variant.lr) if impl == "compiled" else variant.lr
    if variant.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, betas=(variant.momentum, 0.999),
                                weight_decay=variant.weight_decay, **kwargs)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=variant.momentum, weight_decay=variant.weight_decay,
                           nesterov=variant.optimizer == "nesterov", **kwargs)


class TimedPath:
    """One path's model, optimiser, schedule and step function."""

    def __init__(self, name: str, variant, cfg, steps_total: int, seed: int = 1):
        compile_, channels_last, impl, mode, self.bookkeeping = PATHS[name]
        self.name, self.cfg = name, dataclasses.replace(cfg, channels_last=channels_last)
        torch.manual_seed(seed)
        model = build_model(variant.model, variant.dropout)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        self.optimizer = optimizer_for(model, variant, impl)
        self.scheduler = build_scheduler(self.optimizer, variant, epochs=1, steps=steps_total)
        if compile_ == "model":
            model = torch.compile(model, mode=mode, dynamic=False)
        self.model, self.augment = model, variant.augment

        def forward(images, labels):
            out = self.model(prepare_images(images, self.cfg, self.augment))
            loss = F.nll_loss(out, labels, reduction="sum")
            return loss, (out.argmax(1) == labels).sum()

        self.forward = torch.compile(forward, mode=mode, dynamic=False) if compile_ == "step" else forward
        self.opt_step = torch.compile(self.optimizer.step) if impl == "compiled" else self.optimizer.step
        self.loss_sum = torch.zeros(())
        self.correct = torch.zeros((), dtype=torch.long)
        self.bad = torch.full((), -1, dtype=torch.long)

    def step(self, images, labels, step: int) -> None:
        loss, correct = self.forward(images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        (loss * (1 / len(labels))).backward()
        self.opt_step()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.bookkeeping:
            detached = loss.detach()
            self.bad = torch.where((self.bad < 0) & ~torch.isfinite(detached), step, self.bad)
            self.loss_sum += detached
            self.correct += correct

    def run(self, data, batches) -> tuple[float, float]:
        """(wall, CPU) seconds: the CPU time of the process (every thread, user and system:
        page faults included) counts only while it runs, so it moves less than the wall
        time when other jobs share the cores."""
        wall, cpu = time.perf_counter(), time.process_time()
        for i, idx in enumerate(batches):
            self.step(data.images[idx], data.labels[idx], i)
        return time.perf_counter() - wall, time.process_time() - cpu


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(args) -> dict:
    """One worker: one thread count, one allocator setting, every variant and path interleaved."""
    kept = keep_freed_memory() if args.alloc == "keep" else False
    torch.set_num_threads(args.threads)
    params = load_params(REPO / "params.yaml")
    out = {"threads": args.threads, "alloc": args.alloc, "kept": kept, "variants": {}}
    for name in args.variants:
        variant = params.variant(name)
        batch = params.train.batch_size
        # Two warm-up batches, --steps timed ones (every block trains on them), one short batch.
        n = batch * (2 + args.steps) + batch // 2
        cfg = dataclasses.replace(params.train, train_limit=n)
        train, _ = load_datasets(args.data, cfg, "cpu")
        order = global_batches(len(train), batch, 1, 1)
        warm, timed, short = order[:2], order[2:-1], order[-1]
        total_steps = 3 + args.steps * args.blocks
        paths, rows = {}, {}
        for p in args.paths:
            path = TimedPath(p, variant, cfg, total_steps)
            first = path.run(train, warm[:1])[0]        # compiles forward and backward
            second = path.run(train, warm[1:])[0]       # compiled: one steady step
            short_s = path.run(train, [short])[0]       # a new batch size: one more compile
            paths[p] = path
            rows[p] = {"warmup": {"first_step_s": round(first, 3), "second_step_s": round(second, 4),
                                  "short_batch_step_s": round(short_s, 3)},
                       "step_s": [], "cpu_step_s": [], "faults_per_step": []}
        for b in range(args.blocks):
            shift = (args.rotate + b) % len(args.paths)
            for p in args.paths[shift:] + args.paths[:shift]:
                faults = minor_faults()
                wall, cpu = paths[p].run(train, timed)
                rows[p]["step_s"].append(round(wall / args.steps, 5))
                rows[p]["cpu_step_s"].append(round(cpu / args.steps, 5))
                rows[p]["faults_per_step"].append(round((minor_faults() - faults) / args.steps))
        out["variants"][name] = rows
        print(f"[{args.threads} threads, {args.alloc}] {name}: " + ", ".join(
            f"{p} {1000 * statistics.median(r['step_s']):.1f} ms" for p, r in rows.items()), file=sys.stderr,
            flush=True)
    return out


def worker_cmd(args, threads: int, alloc: str, rotate: int) -> list[str]:
    return [sys.executable, __file__, "--worker", "--threads", str(threads), "--alloc", alloc,
            "--rotate", str(rotate), "--data", str(args.data), "--steps", str(args.steps),
            "--blocks", str(args.blocks), "--variants", *args.variants, "--paths", *args.paths]


def run_worker(cmd: list[str], env: dict) -> dict:
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"worker failed ({proc.returncode}): {' '.join(cmd)}")
    return json.loads(proc.stdout.splitlines()[-1])


def _median_ratio(pairs) -> float | None:
    ratios = [a / b for a, b in pairs]
    return round(statistics.median(ratios), 3) if ratios else None


def summarize(workers: list[dict], args) -> dict:
    out = {}
    for threads in args.threads:
        mine = [w for w in workers if w["threads"] == threads]
        alloc, levers = ([w for w in mine if w["phase"] == phase] for phase in ("allocator", "levers"))
        for name in args.variants:
            rows = {}
            if alloc:
                by_round = {a: {w["round"]: w["variants"][name]["eager"] for w in alloc
                                if w["alloc"] == a and name in w["variants"]} for a in ALLOCS}
                rounds = sorted(set(by_round["default"]) & set(by_round["keep"]))
                rows["allocator: eager, default / kept"] = {
                    clock: {"median_step_ms": {a: round(1000 * statistics.median(
                                statistics.median(r[key]) for r in by_round[a].values()), 2) for a in ALLOCS},
                            "speedup_kept": _median_ratio(
                                (statistics.median(by_round["default"][r][key]),
                                 statistics.median(by_round["keep"][r][key])) for r in rounds)}
                    for clock, key in (("wall", "step_s"), ("cpu", "cpu_step_s"))}
                rows["allocator: eager, default / kept"]["faults_per_step"] = {
                    a: statistics.median(f for r in by_round[a].values() for f in r["faults_per_step"]) for a in ALLOCS}
            if levers:
                first = min(levers, key=lambda w: w["index"])
                for p in args.paths:
                    row = {"faults_per_step": statistics.median(
                        f for w in levers for f in w["variants"][name][p]["faults_per_step"])}
                    for clock, key in (("wall", "step_s"), ("cpu", "cpu_step_s")):
                        row[clock] = {
                            "median_step_ms": round(1000 * statistics.median(
                                t for w in levers for t in w["variants"][name][p][key]), 2),
                            "speedup_vs_eager": _median_ratio(
                                pair for w in levers for pair in zip(w["variants"][name]["eager"][key],
                                                                     w["variants"][name][p][key]))}
                    later = [w["variants"][name][p]["warmup"] for w in levers if w is not first]
                    row["warmup_first_process"] = first["variants"][name][p]["warmup"]
                    row["warmup_later_processes_median"] = {
                        k: round(statistics.median(x[k] for x in later), 3) for k in later[0]} if later else None
                    rows[f"levers: {p}"] = row
            out[f"{threads} threads / {name}"] = rows
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["lr_scheduler", "skeleton"])
    ap.add_argument("--paths", nargs="+", default=DEFAULT_PATHS, choices=list(PATHS))
    ap.add_argument("--steps", type=int, default=5, help="full batches per path per block")
    ap.add_argument("--blocks", type=int, default=6, help="turns each path takes in a worker, order rotating")
    ap.add_argument("--repeats", type=int, default=3, help="levers workers per thread count")
    ap.add_argument("--rounds", type=int, default=6, help="allocator rounds (two workers a variant) per thread count")
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="torch threads, workers of their own")
    ap.add_argument("--data", type=Path, help="a root holding MNIST/raw (default: fetched into a tmp dir)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--alloc", choices=ALLOCS, default="default", help=argparse.SUPPRESS)
    ap.add_argument("--rotate", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if "eager" not in args.paths:
        args.paths = ["eager", *args.paths]
    if args.worker:
        args.threads = args.threads[0]
        print(json.dumps(measure(args)))
        return
    if args.out is None:
        ap.error("--out is required")
    work = Path(tempfile.mkdtemp(prefix="speed_levers_"))
    if args.data is None:
        args.data = work / "data"
        download_mnist(args.data, log=lambda msg: None)
    batch_size = load_params(REPO / "params.yaml").train.batch_size
    partial = args.out.with_suffix(".partial.jsonl")
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text("")
    workers = []

    def run(threads: int, env: dict, alloc: str, rotate: int, paths: list, variants: list, **tags) -> None:
        cmd = worker_cmd(args, threads, alloc, rotate)
        cmd[cmd.index("--variants") + 1:] = [*variants, "--paths", *paths]
        workers.append({**run_worker(cmd, env), **tags, "index": len(workers)})
        with partial.open("a") as f:
            f.write(json.dumps(workers[-1]) + "\n")

    for threads in args.threads:
        # A cold inductor cache per thread count: the first levers worker's warm-up is a first run's.
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(work / f"inductor-{threads}")}
        for r in range(args.rounds):
            for variant in args.variants:  # a training run trains one variant: so does each worker
                for alloc in (ALLOCS if r % 2 == 0 else ALLOCS[::-1]):
                    run(threads, env, alloc, 0, ["eager"], [variant], phase="allocator", round=r)
        for r in range(args.repeats):
            run(threads, env, "keep", r, args.paths, args.variants, phase="levers", round=r)
    record = {
        "what": "each lever alone against our eager training step: the allocator between alternating worker "
                "processes that train the eager path alone; the other levers interleaved inside worker processes",
        "command": " ".join(["python", "research/speed_levers.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"cpu": describe_device(torch.device("cpu")), "machine": platform.machine(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "settings": {"variants": args.variants, "paths": args.paths, "steps": args.steps, "blocks": args.blocks,
                     "repeats": args.repeats, "rounds": args.rounds, "threads": args.threads,
                     "batch_size": batch_size},
        "paths": {p: dict(zip(("compile", "channels_last", "optimizer", "mode", "bookkeeping"), PATHS[p]))
                  for p in args.paths},
        "allocators": {"default": "glibc malloc as a process starts",
                       "keep": "after mnist_repro.training.speed.keep_freed_memory()"},
        "summary": summarize(workers, args),
        "workers": workers,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
