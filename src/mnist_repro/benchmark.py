"""Side-by-side throughput of our training path and the published one, in one process.

Both paths train the same architecture with the same optimiser and batch size
for the same number of steps; only the data path differs:

* ours: tensors on the device, augmentation as a batch op (``train_one_epoch``);
* ours under mixed precision (``benchmark.mixed_precision``): the same loop inside
  ``torch.autocast``, which is what Accelerate's bf16/fp16 wraps the forward in;
* baseline: ``torchvision.datasets.MNIST`` + per-image PIL transforms in a
  ``DataLoader`` (shuffle, one worker) and the notebooks' loop, from published_path.py.

Repeats rotate which path goes first, so drift in machine speed (other
jobs, thermal, noisy neighbours) hits both; medians are reported.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import time

import torch

from . import published_path
from .config import Params, TrainConfig, VariantConfig
from .device_data import DeviceData, load_datasets, steps_per_epoch
from .errors import ParamsError
from .files import write_json
from .launch import describe_device, make_accelerator
from .models import build_model
from .published_path import published_loader
from .train import build_optimizer, build_scheduler, evaluate, train_one_epoch


def _fresh(variant: VariantConfig, cfg: TrainConfig, steps: int, device):
    model = build_model(variant.model, variant.dropout).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, variant)
    return model, optimizer, build_scheduler(optimizer, variant, epochs=1, steps=steps)


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def time_ours(variant, cfg, train: DeviceData, test: DeviceData, steps: int, accelerator,
              mixed_precision: str = "no") -> tuple[float, float]:
    model, optimizer, scheduler = _fresh(variant, cfg, steps, accelerator.device)
    model, optimizer = accelerator.prepare(model, optimizer)
    autocast = (torch.autocast(accelerator.device.type, dtype=AUTOCAST_DTYPES[mixed_precision])
                if mixed_precision != "no" else contextlib.nullcontext())
    with autocast:
        start = time.perf_counter()
        train_one_epoch(model, optimizer, scheduler, train, cfg, variant, cfg.seed, 1, accelerator)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        evaluate(accelerator.unwrap_model(model), test, cfg, accelerator)
        return train_s, time.perf_counter() - start


def time_baseline(variant, cfg, data_root, steps: int, images: int, test_images: int) -> tuple[float, float]:
    """The published notebooks' loop (published_path.py) over the same images, timed like ours."""
    model, optimizer, scheduler = _fresh(variant, cfg.__class__(**{**cfg.__dict__, "channels_last": False}),
                                         steps, "cpu")
    kwargs = dict(mean=cfg.mean, std=cfg.std, batch_size=cfg.batch_size)
    start = time.perf_counter()  # includes the worker start-up, as every published epoch pays it
    published_path.train_epoch(model, optimizer, scheduler, published_loader(
        data_root, train=True, augment=variant.augment, limit=images, **kwargs))
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    published_path.test_epoch(model, published_loader(data_root, train=False, augment=False, limit=test_images,
                                                       **kwargs))
    return train_s, time.perf_counter() - start


def profile_ours(variant, cfg, train: DeviceData, accelerator, steps: int = 30, top: int = 8) -> list[dict]:
    """Where one of our training steps spends its time: top ops by self CPU time."""
    model, optimizer, scheduler = _fresh(variant, cfg, steps, accelerator.device)
    sub = train.head(steps * cfg.batch_size)
    with torch.profiler.profile() as prof:
        train_one_epoch(model, optimizer, scheduler, sub, cfg, variant, cfg.seed, 1, accelerator)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"op": e.key, "self_cpu_share": round(e.self_cpu_time_total / total, 3)} for e in ranked]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_benchmark(variant: VariantConfig, cfg: TrainConfig, data_root, steps: int, repeats: int,
                  accelerator, mixed_precision: str = "bf16", log=print) -> dict:
    """Time ours, ours under ``mixed_precision`` and the published path; ``steps`` 0 = one epoch."""
    train, test = load_datasets(data_root, cfg, accelerator.device)
    per_epoch = steps_per_epoch(len(train), cfg.batch_size)
    steps = steps or per_epoch
    if steps > per_epoch:
        raise ParamsError(f"benchmark.steps: {steps} is more than the {per_epoch} steps of one epoch "
                          f"of {len(train)} images in batches of {cfg.batch_size}; use 0 (one epoch) or fewer")
    n = min(steps * cfg.batch_size, len(train))  # a whole epoch ends on a short batch
    train = train.head(n)
    mp_path = f"ours_{mixed_precision}"
    timings = {"ours": [], mp_path: [], "baseline": []}
    rss_ours = None
    for r in range(repeats):
        order = list(timings)[r % 3:] + list(timings)[:r % 3]
        for path in order:
            if path == "baseline":
                timings[path].append(time_baseline(variant, cfg, data_root, steps, n, len(test)))
            else:
                timings[path].append(time_ours(variant, cfg, train, test, steps, accelerator,
                                               "no" if path == "ours" else mixed_precision))
                if path == "ours" and rss_ours is None and not timings["baseline"]:
                    rss_ours = peak_rss_mib()  # before the baseline ever ran
            log(f"repeat {r + 1}/{repeats} {path}: train {timings[path][-1][0]:.1f} s")

    def summary(i: int, images: int) -> dict:
        median = {path: statistics.median(t[i] for t in runs) for path, runs in timings.items()}
        return {"ours_images_per_s": round(images / median["ours"], 1),
                f"{mp_path}_images_per_s": round(images / median[mp_path], 1),
                "baseline_images_per_s": round(images / median["baseline"], 1),
                "speedup": round(median["baseline"] / median["ours"], 2),
                f"{mixed_precision}_speedup": round(median["ours"] / median[mp_path], 2),
                **{f"{path}_seconds": [round(t[i], 2) for t in runs] for path, runs in timings.items()}}

    return {
        "variant": variant.name,
        "steps": steps,
        "batch_size": cfg.batch_size,
        "repeats": repeats,
        "device": accelerator.device.type,
        "device_name": describe_device(accelerator.device),
        "torch_threads": torch.get_num_threads(),
        "train": summary(0, n),
        "test": summary(1, len(test)),
        "epoch_seconds_ours": round(statistics.median(t[0] for t in timings["ours"]) / steps
                                    * per_epoch, 1),
        "peak_rss_mib_ours": round(rss_ours, 1),
        "peak_rss_mib_process": round(peak_rss_mib(), 1),
        "profile_ours": profile_ours(variant, cfg, train, accelerator),
    }


def benchmark_and_write(params: Params, data_root, out) -> dict:
    """The benchmark stage: params.benchmark's measurement, written to ``out``."""
    bench = params.benchmark
    result = run_benchmark(params.variant(bench.variant), params.train, data_root, bench.steps, bench.repeats,
                           make_accelerator(), bench.mixed_precision)
    write_json(out, result)
    print({k: result[k] for k in ("variant", "train", "test", "peak_rss_mib_ours")})
    return result
