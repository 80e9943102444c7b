"""Side-by-side training throughput of each path, every repeat of every path in a fresh process.

The paths train the same architecture with the same optimiser and batch size for the same
number of steps, on the same thread count (train.cpu_threads, as the published_path stage
runs the notebooks' path here):

* ``published``: ``torchvision.datasets.MNIST`` + per-image PIL transforms in a ``DataLoader``
  (shuffle, one worker) and the notebooks' loop (published_path.py), as published;
* ``eager``: our data path (tensors on the device, augmentation as a batch op,
  ``train_one_epoch``) as it ran before the speed levers: train.compile false,
  train.keep_freed_memory false;
* ``default``: our path with params.yaml's train settings (what every training stage runs);
* ``default_<bf16|fp16>``: the default inside ``torch.autocast`` at ``benchmark.mixed_precision``
  (what Accelerate wraps the forward in), where the device supports it;
* ``compiled``: the default with train.compile true, when it is not already the default and
  torch.compile can run here (speed.compile_problem); its speed on this machine is what
  decides the default (docs/speed.md).

Each path runs in its own process (python -m mnist_repro.training.benchmark --worker): the allocator
setting cannot be undone inside a process, and the published path must run as it did, with
glibc's default allocator. Repeats rotate which path goes first, so drift in machine speed
(other jobs, thermal, noisy neighbours) hits all; medians are reported. In each of our
processes a warm-up pass (one full batch and, if the timed pass ends on a short batch, one of
that size: every graph torch.compile needs) is timed apart from the timed pass (steady state).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from . import published_path
from ..core.config import Params, TrainConfig, VariantConfig
from .device_data import DeviceData, global_batches, load_datasets, steps_per_epoch
from ..core.errors import ParamsError
from ..core.files import write_json
from .launch import cpu_threads_per_process, describe_device, make_accelerator
from ..core.models import build_model
from .published_path import published_loader
from .speed import compile_problem, keep_freed_memory
from .train import build_optimizer, build_scheduler, evaluate, step_forward, train_one_epoch

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
BASELINE = "published"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _fresh(variant: VariantConfig, cfg: TrainConfig, steps: int, device):
    model = build_model(variant.model, variant.dropout).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, variant)
    return model, optimizer, build_scheduler(optimizer, variant, epochs=1, steps=steps)


def warmup_slice(train: DeviceData, batch_size: int) -> DeviceData:
    """One full batch, plus one of the timed pass's short last batch if it has one."""
    short = len(train) % batch_size
    return train.head(min(len(train), batch_size + short))


def time_ours(variant, cfg, train: DeviceData, test: DeviceData, accelerator, mixed_precision: str = "no") -> dict:
    """Warm-up, then one timed pass over ``train`` and one over ``test``: our path under ``cfg``."""
    warm = warmup_slice(train, cfg.batch_size)
    warm_steps, steps = (steps_per_epoch(len(d), cfg.batch_size) for d in (warm, train))
    model, optimizer, scheduler = _fresh(variant, cfg, warm_steps + steps, accelerator.device)
    model, optimizer = accelerator.prepare(model, optimizer)
    forward = step_forward(model, cfg, variant)
    autocast = (torch.autocast(accelerator.device.type, dtype=AUTOCAST_DTYPES[mixed_precision])
                if mixed_precision != "no" else contextlib.nullcontext())
    with autocast:
        dtype = torch.get_autocast_dtype(accelerator.device.type) if mixed_precision != "no" else None
        start = time.perf_counter()
        train_one_epoch(model, optimizer, scheduler, warm, cfg, variant, cfg.seed, 0, accelerator, forward)
        warmup_s = time.perf_counter() - start
        start = time.perf_counter()
        result = train_one_epoch(model, optimizer, scheduler, train, cfg, variant, cfg.seed, 1, accelerator, forward)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        tested = evaluate(accelerator.unwrap_model(model), test, cfg, accelerator)
        test_s = time.perf_counter() - start
    return {"train_s": train_s, "test_s": test_s, "warmup_s": warmup_s, "images": result["images"],
            "train_loss": result["loss"], "train_acc": result["acc"], "test_acc": tested["acc"],
            "steps": result["steps"], "batches": [len(b) for b in global_batches(len(train), cfg.batch_size,
                                                                                 cfg.seed, 1)],
            "autocast": None if dtype is None else str(dtype).removeprefix("torch.")}


def time_baseline(variant, cfg, data_root, steps: int, images: int, test_images: int) -> dict:
    """The published notebooks' loop (published_path.py) over the same images, timed like ours
    (the DataLoader's worker start-up included, as every published epoch pays it)."""
    model, optimizer, scheduler = _fresh(variant, dataclasses.replace(cfg, channels_last=False), steps, "cpu")
    kwargs = dict(mean=cfg.mean, std=cfg.std, batch_size=cfg.batch_size)
    batches = []

    def counted(loader):
        for x, y in loader:
            batches.append(len(y))
            yield x, y

    start = time.perf_counter()
    result = published_path.train_epoch(model, optimizer, scheduler, counted(published_loader(
        data_root, train=True, augment=variant.augment, limit=images, **kwargs)))
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    published_path.test_epoch(model, published_loader(data_root, train=False, augment=False, limit=test_images,
                                                       **kwargs))
    return {"train_s": train_s, "test_s": time.perf_counter() - start, "warmup_s": None,
            "images": result["images"], "steps": result["steps"], "batches": batches, "autocast": None}


def profile_ours(variant, cfg, train: DeviceData, accelerator, steps: int = 30, top: int = 8) -> list[dict]:
    """Where one of our training steps spends its time: top ops by self CPU time."""
    model, optimizer, scheduler = _fresh(variant, cfg, steps, accelerator.device)
    sub = train.head(steps * cfg.batch_size)
    forward = step_forward(model, cfg, variant)
    train_one_epoch(model, optimizer, scheduler, sub.head(cfg.batch_size), cfg, variant, cfg.seed, 0, accelerator,
                    forward)  # a compiled forward compiles here, outside the profile
    model, optimizer, scheduler = _fresh(variant, cfg, steps, accelerator.device)
    forward = step_forward(model, cfg, variant)
    with torch.profiler.profile() as prof:
        train_one_epoch(model, optimizer, scheduler, sub, cfg, variant, cfg.seed, 1, accelerator, forward)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"op": e.key, "self_cpu_share": round(e.self_cpu_time_total / total, 3)} for e in ranked]


def paths(cfg: TrainConfig, mixed_precision: str, device: torch.device) -> tuple[dict, dict]:
    """({path: (its train settings, its autocast)}, {path left out: why}) on ``device``."""
    eager = dataclasses.replace(cfg, compile=False, keep_freed_memory=False)
    chosen = {BASELINE: (eager, "no"), "eager": (eager, "no"), "default": (cfg, "no")}
    skipped = {}
    if device.type == "cpu" and mixed_precision == "fp16":
        skipped[f"default_{mixed_precision}"] = "fp16 needs a CUDA GPU (no gradient scaler on CPU)"
    elif device.type == "cuda" and mixed_precision == "bf16" and not torch.cuda.is_bf16_supported():
        skipped[f"default_{mixed_precision}"] = f"{describe_device(device)} has no bf16"
    else:
        chosen[f"default_{mixed_precision}"] = (cfg, mixed_precision)
    if not cfg.compile:
        problem = compile_problem(device)
        if problem:
            skipped["compiled"] = problem
        else:
            chosen["compiled"] = (dataclasses.replace(cfg, compile=True), "no")
    return chosen, skipped


def worker(spec: dict) -> dict:
    """One path, one repeat, in this process (``python -m mnist_repro.training.benchmark --worker``)."""
    cfg, variant = TrainConfig(**spec["train"]), VariantConfig(**spec["variant"])
    kept = cfg.keep_freed_memory and keep_freed_memory()  # first: before the data's allocations
    torch.set_num_threads(cpu_threads_per_process(cfg.cpu_threads))
    if spec["path"] == BASELINE:
        timed = time_baseline(variant, cfg, spec["data"], spec["steps"], spec["images"], spec["test_images"])
    else:
        accelerator = make_accelerator()
        train, test = load_datasets(spec["data"], cfg, accelerator.device)
        timed = time_ours(variant, cfg, train.head(spec["images"]), test, accelerator, spec["mixed_precision"])
        if spec.get("profile"):
            timed["profile"] = profile_ours(variant, cfg, train, accelerator)
    return {**timed, "path": spec["path"], "compile": cfg.compile and spec["path"] != BASELINE,
            "kept_memory": kept, "threads": torch.get_num_threads(), "peak_rss_mib": round(peak_rss_mib(), 1)}


def run_worker(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, "-m", "mnist_repro.training.benchmark", "--worker", json.dumps(spec)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        raise RuntimeError(f"benchmark path {spec['path']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def run_benchmark(variant: VariantConfig, cfg: TrainConfig, data_root, steps: int, repeats: int,
                  mixed_precision: str = "bf16", log=print) -> dict:
    """Time every path (``paths``), ``repeats`` times each, alternating; ``steps`` 0 = one epoch."""
    device = make_accelerator().device
    train, test = load_datasets(data_root, cfg, "cpu")
    per_epoch = steps_per_epoch(len(train), cfg.batch_size)
    steps = steps or per_epoch
    if steps > per_epoch:
        raise ParamsError(f"benchmark.steps: {steps} is more than the {per_epoch} steps of one epoch "
                          f"of {len(train)} images in batches of {cfg.batch_size}; use 0 (one epoch) or fewer")
    n = min(steps * cfg.batch_size, len(train))  # a whole epoch ends on a short batch
    chosen, skipped = paths(cfg, mixed_precision, device)
    names = list(chosen)
    spec = {"variant": dataclasses.asdict(variant), "data": str(data_root), "steps": steps, "images": n,
            "test_images": len(test)}
    runs = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            settings, precision = chosen[name]
            runs[name].append(run_worker({**spec, "path": name, "train": dataclasses.asdict(settings),
                                          "mixed_precision": precision}))
            warm = runs[name][-1]["warmup_s"]
            log(f"repeat {r + 1}/{repeats} {name}: train {runs[name][-1]['train_s']:.1f} s"
                + (f" after a {warm:.1f} s warm-up" if warm is not None else ""))
    profile = run_worker({**spec, "path": "default", "train": dataclasses.asdict(cfg), "mixed_precision": "no",
                          "profile": True})["profile"]

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    rows = {}
    for name in names:
        first = runs[name][0]
        rows[name] = {
            "train_images_per_s": round(n / median(name, "train_s"), 1),
            "test_images_per_s": round(len(test) / median(name, "test_s"), 1),
            "train_speedup": round(median(BASELINE, "train_s") / median(name, "train_s"), 2),
            "test_speedup": round(median(BASELINE, "test_s") / median(name, "test_s"), 2),
            "warmup_seconds": None if first["warmup_s"] is None else round(median(name, "warmup_s"), 2),
            "train_seconds": [round(run["train_s"], 2) for run in runs[name]],
            "test_seconds": [round(run["test_s"], 2) for run in runs[name]],
            "warmup_seconds_each": None if first["warmup_s"] is None else [round(run["warmup_s"], 2)
                                                                             for run in runs[name]],
            "compile": first["compile"], "keep_freed_memory": first["kept_memory"],
            "autocast": first["autocast"], "torch_threads": first["threads"],
            "peak_rss_mib": max(run["peak_rss_mib"] for run in runs[name]),
            "images": first["images"], "steps": first["steps"], "batches": first["batches"],
        }
    return {
        "variant": variant.name,
        "steps": steps,
        "batch_size": cfg.batch_size,
        "repeats": repeats,
        "device": device.type,
        "device_name": describe_device(device),
        "baseline": BASELINE,
        "paths": rows,
        "skipped": skipped,
        "epoch_seconds_default": round(median("default", "train_s") / steps * per_epoch, 1),
        "profile_default": profile,
    }


def benchmark_and_write(params: Params, data_root, out) -> dict:
    """The benchmark stage: params.benchmark's measurement, written to ``out``."""
    bench = params.benchmark
    result = run_benchmark(params.variant(bench.variant), params.train, data_root, bench.steps, bench.repeats,
                           bench.mixed_precision)
    write_json(out, result)
    for name, row in result["paths"].items():
        print(f"{name:>14}: {row['train_images_per_s']:>8.1f} training images/s, x{row['train_speedup']:.2f} "
              f"the published path" + (f" (warm-up {row['warmup_seconds']} s)" if row["warmup_seconds"] else ""))
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="one benchmark path in this process (run_benchmark starts these)")
    ap.add_argument("--worker", required=True, help="the path's JSON spec")
    print(json.dumps(worker(json.loads(ap.parse_args().worker))))
