"""Side-by-side throughput of our training path and the published one, in one process.

Both paths train the same architecture with the same optimiser and batch size
for the same number of steps; only the data path differs:

* ours: tensors on the device, augmentation as a batch op (``train_one_epoch``);
* baseline: ``torchvision.datasets.MNIST`` + per-image PIL transforms in a
  ``DataLoader`` (shuffle, one worker), the published notebooks' way.

Repeats alternate which path goes first, so drift in machine speed (other
jobs, thermal, noisy neighbours) hits both; medians are reported.
"""

from __future__ import annotations

import resource
import statistics
import time

import torch
import torch.nn.functional as F

from .config import ParamsError, TrainConfig, VariantConfig
from .models import build_model
from .published import published_loader
from .train import (Dataset, build_optimizer, build_scheduler, evaluate, load_datasets,
                    steps_per_epoch, train_one_epoch)


def _fresh(variant: VariantConfig, cfg: TrainConfig, steps: int, device):
    model = build_model(variant.model, variant.dropout).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, variant)
    return model, optimizer, build_scheduler(optimizer, variant, epochs=1, steps=steps)


def time_ours(variant, cfg, train: Dataset, test: Dataset, steps: int, accelerator) -> tuple[float, float]:
    model, optimizer, scheduler = _fresh(variant, cfg, steps, accelerator.device)
    model, optimizer = accelerator.prepare(model, optimizer)
    start = time.perf_counter()
    train_one_epoch(model, optimizer, scheduler, train, cfg, variant, cfg.seed, 1, accelerator)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    evaluate(accelerator.unwrap_model(model), test, cfg, accelerator)
    return train_s, time.perf_counter() - start


def time_baseline(variant, cfg, data_root, steps: int, images: int) -> tuple[float, float]:
    model, optimizer, scheduler = _fresh(variant, cfg.__class__(**{**cfg.__dict__, "channels_last": False}),
                                         steps, "cpu")
    kwargs = dict(mean=cfg.mean, std=cfg.std, batch_size=cfg.batch_size)
    start = time.perf_counter()  # includes the worker start-up, as every published epoch pays it
    model.train()
    for x, y in published_loader(data_root, train=True, augment=variant.augment,
                                 limit=images, **kwargs):
        loss = F.nll_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss.item()  # the published loop reads the loss every batch for its progress bar
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    model.eval()
    with torch.no_grad():
        for x, y in published_loader(data_root, train=False, augment=False, **kwargs):
            F.nll_loss(model(x), y, reduction="sum").item()
    return train_s, time.perf_counter() - start


def profile_ours(variant, cfg, train: Dataset, accelerator, steps: int = 30, top: int = 8) -> list[dict]:
    """Where one of our training steps spends its time: top ops by self CPU time."""
    model, optimizer, scheduler = _fresh(variant, cfg, steps, accelerator.device)
    sub = Dataset(train.images[: steps * cfg.batch_size], train.labels[: steps * cfg.batch_size])
    with torch.profiler.profile() as prof:
        train_one_epoch(model, optimizer, scheduler, sub, cfg, variant, cfg.seed, 1, accelerator)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"op": e.key, "self_cpu_share": round(e.self_cpu_time_total / total, 3)} for e in ranked]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_benchmark(variant: VariantConfig, cfg: TrainConfig, data_root, steps: int, repeats: int,
                  accelerator, log=print) -> dict:
    train, test = load_datasets(data_root, cfg, accelerator.device)
    per_epoch = steps_per_epoch(len(train), cfg.batch_size)
    if not 0 < steps <= per_epoch:
        raise ParamsError(f"benchmark.steps: {steps} is not between 1 and the {per_epoch} steps of one epoch "
                          f"of {len(train)} images in batches of {cfg.batch_size}; choose a step count in that range")
    n = min(steps * cfg.batch_size, len(train))  # a whole epoch ends on a short batch
    train = Dataset(train.images[:n], train.labels[:n])
    ours, base = [], []
    rss_ours = None
    for r in range(repeats):
        order = ("ours", "baseline") if r % 2 == 0 else ("baseline", "ours")
        for path in order:
            if path == "ours":
                ours.append(time_ours(variant, cfg, train, test, steps, accelerator))
                rss_ours = rss_ours or peak_rss_mib()  # before the baseline ever ran
            else:
                base.append(time_baseline(variant, cfg, data_root, steps, n))
            log(f"repeat {r + 1}/{repeats} {path}: train {(ours if path == 'ours' else base)[-1][0]:.1f} s")

    def summary(i: int, images: int) -> dict:
        ours_s = statistics.median(t[i] for t in ours)
        base_s = statistics.median(t[i] for t in base)
        return {"ours_images_per_s": round(images / ours_s, 1),
                "baseline_images_per_s": round(images / base_s, 1),
                "speedup": round(base_s / ours_s, 2),
                "ours_seconds": [round(t[i], 2) for t in ours],
                "baseline_seconds": [round(t[i], 2) for t in base]}

    return {
        "variant": variant.name,
        "steps": steps,
        "batch_size": cfg.batch_size,
        "repeats": repeats,
        "device": accelerator.device.type,
        "torch_threads": torch.get_num_threads(),
        "train": summary(0, n),
        "test": summary(1, len(test)),
        "epoch_seconds_ours": round(statistics.median(t[0] for t in ours) / steps
                                    * per_epoch, 1),
        "peak_rss_mib_ours": round(rss_ours, 1),
        "peak_rss_mib_process": round(peak_rss_mib(), 1),
        "profile_ours": profile_ours(variant, cfg, train, accelerator),
    }
