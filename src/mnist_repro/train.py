"""One Accelerate training loop for every variant, on 1 CPU, 1 GPU, N GPUs or N nodes.

The whole of MNIST (55 MB as uint8) sits on the training device as tensors. Each
optimiser step slices its images by index, augments them as a batch on the
device, and never touches Python per image. Across N processes each global
batch of ``batch_size`` images is split into N shares, so the optimisation
(batch, number of steps, schedule) is the same on any N; only wall time changes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from .augment import augment_batch
from .config import ParamsError, TrainConfig, VariantConfig
from .data import load_split
from .io import write_json
from .models import build_model, count_parameters

LOG_EVERY = 20  # steps between progress-bar refreshes; each one costs a host-device sync


class DivergedError(RuntimeError):
    """The loss became NaN or infinite; no metrics are written."""


def cpu_threads_per_process(requested: int) -> int:
    """`accelerate launch` without --cpu sets OMP_NUM_THREADS=1, which on a CPU-only
    machine leaves every core but one idle; 0 shares the cores among local processes."""
    if requested:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def make_accelerator() -> Accelerator:
    # Without CUDA, `accelerate launch --multi_gpu --num_processes 2` would otherwise
    # start two unrelated single-process runs; cpu=True makes them one gloo job.
    return Accelerator(cpu=not torch.cuda.is_available())


@dataclass
class Dataset:
    """Images as uint8 (N, 28, 28) and labels (N,) on the training device."""
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self):
        return len(self.labels)

    def to(self, device) -> "Dataset":
        return Dataset(self.images.to(device), self.labels.to(device))


def load_datasets(data_root, cfg: TrainConfig, device) -> tuple[Dataset, Dataset]:
    train = Dataset(*load_split(data_root, train=True, limit=cfg.train_limit))
    test = Dataset(*load_split(data_root, train=False, limit=cfg.test_limit))
    return train.to(device), test.to(device)


def prepare_images(images_u8: torch.Tensor, cfg: TrainConfig, augment: bool) -> torch.Tensor:
    """uint8 (B, 28, 28) -> normalised float (B, 1, 28, 28), augmented as published if asked."""
    x = images_u8.unsqueeze(1).float().div_(255)
    if augment:
        x = augment_batch(x)
    x = (x - cfg.mean) / cfg.std
    return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x


def global_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """This epoch's shuffled global batches of indices, identical on every process."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return list(torch.randperm(n, generator=g).split(batch_size))


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def train_one_epoch(model, optimizer, scheduler, data: Dataset, cfg: TrainConfig,
                    variant: VariantConfig, seed: int, epoch: int, accelerator: Accelerator) -> dict:
    """One pass over the training set; returns loss and accuracy over all processes."""
    model.train()
    rank, world = accelerator.process_index, accelerator.num_processes
    dev = accelerator.device
    loss_sum = torch.zeros((), device=dev)
    correct = torch.zeros((), device=dev, dtype=torch.long)
    seen = 0
    bad_step = torch.full((), -1, device=dev, dtype=torch.long)  # first non-finite step, no sync
    batches = global_batches(len(data), cfg.batch_size, seed, epoch)
    bar = tqdm(batches, disable=not accelerator.is_local_main_process, leave=False,
               desc=f"{variant.name} epoch {epoch}", dynamic_ncols=True)
    lr = optimizer.param_groups[0]["lr"]
    for step, idx in enumerate(bar):
        idx = idx.tensor_split(world)[rank].to(dev)
        x = prepare_images(data.images[idx], cfg, variant.augment)
        y = data.labels[idx]
        out = model(x)
        loss = F.nll_loss(out, y)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()  # once per global step on every process; see build_scheduler
        detached = loss.detach()
        bad_step = torch.where((bad_step < 0) & ~torch.isfinite(detached), step, bad_step)
        loss_sum += detached * len(y)
        correct += (out.argmax(1) == y).sum()
        seen += len(y)
        if step % LOG_EVERY == 0 or step == len(batches) - 1:
            _check_finite(bad_step, variant, epoch)
            bar.set_postfix_str(f"Loss={detached.item():.4f} Batch_id={step} "
                                f"Accuracy={100 * correct.item() / seen:.2f}", refresh=False)
    totals = accelerator.reduce(torch.stack([loss_sum, correct.to(loss_sum.dtype),
                                             torch.tensor(float(seen), device=dev)]), "sum")
    loss_total, correct_total, n = totals.tolist()
    return {"loss": loss_total / n, "acc": 100 * correct_total / n, "images": int(n),
            "steps": len(batches), "lr": lr}


def _check_finite(bad_step: torch.Tensor, variant: VariantConfig, epoch: int) -> None:
    step = int(bad_step.item())
    if step >= 0:
        raise DivergedError(
            f"{variant.name}: loss became NaN or infinite at epoch {epoch}, step {step}; "
            f"lower variants.{variant.name}.lr or check the data. No metrics were written.")


@torch.no_grad()
def evaluate(model, data: Dataset, cfg: TrainConfig, accelerator: Accelerator) -> dict:
    """Mean NLL and accuracy over every test image exactly once, whatever the process count.

    Each process takes a contiguous share (``tensor_split``: no padding, no dropped
    tail) and the sums are reduced, so nothing is counted twice. ``model`` must be
    the unwrapped module: DDP's forward would sync buffers, and shares may differ
    in batch count.
    """
    model.eval()
    if accelerator.num_processes > 1:
        # Without SyncBatchNorm each rank has updated its BatchNorm running statistics
        # from its own share since DDP last broadcast them; evaluate rank 0's, the saved model.
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)
    share = torch.arange(len(data)).tensor_split(accelerator.num_processes)[accelerator.process_index]
    dev = accelerator.device
    loss_sum = torch.zeros((), device=dev)
    correct = torch.zeros((), device=dev)
    for idx in share.split(cfg.eval_batch_size):
        idx = idx.to(dev)
        out = model(prepare_images(data.images[idx], cfg, augment=False))
        y = data.labels[idx]
        loss_sum += F.nll_loss(out, y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
    totals = accelerator.reduce(torch.stack([loss_sum, correct,
                                             torch.tensor(float(len(share)), device=dev)]), "sum")
    loss_total, correct_total, n = totals.tolist()
    return {"loss": loss_total / n, "acc": 100 * correct_total / n, "images": int(n)}


def build_optimizer(model, variant: VariantConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=variant.lr, momentum=variant.momentum)


def build_scheduler(optimizer, variant: VariantConfig, epochs: int, steps: int):
    """The published OneCycleLR over exactly epochs x steps optimiser steps.

    Deliberately not passed to ``accelerator.prepare``: a prepared scheduler is
    stepped once per process per step, which would end the cycle early on N > 1.
    """
    if variant.schedule == "constant":
        return None
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=variant.lr, epochs=epochs,
                                               steps_per_epoch=steps)


@dataclass
class Checkpoint:
    """Resume state in a directory: Accelerate's save_state plus a JSON manifest.

    The manifest names the newest complete state and the history so far, and a
    fingerprint of the run's settings: a state saved under other params is never
    resumed. A finished run deletes its states and leaves only a finished manifest.
    """
    directory: Path
    fingerprint: str

    @property
    def manifest(self) -> Path:
        return self.directory / "run.json"

    def resumable(self) -> dict | None:
        if not self.manifest.exists():
            return None
        try:
            saved = json.loads(self.manifest.read_text())
        except json.JSONDecodeError:
            return None
        state = self.directory / saved.get("state", "")
        if saved.get("finished") or saved.get("fingerprint") != self.fingerprint or not state.is_dir():
            return None
        return saved

    def save(self, accelerator: Accelerator, history: list, wall_seconds: float, scheduler) -> None:
        """Model, optimiser and RNG states via Accelerate (loaded with weights_only=True);
        history and scheduler as JSON, so nothing here needs unpickling."""
        epoch = len(history)
        state = f"epoch-{epoch}"
        accelerator.save_state(str(self.directory / state))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json(self.manifest, {
                "fingerprint": self.fingerprint, "state": state, "history": history,
                "wall_seconds": wall_seconds,
                "scheduler": scheduler.state_dict() if scheduler is not None else None})
            for old in self.directory.glob("epoch-*"):
                if old.name != state:
                    shutil.rmtree(old)
        accelerator.wait_for_everyone()

    def finish(self, accelerator: Accelerator) -> None:
        if accelerator.is_main_process:
            write_json(self.manifest, {"fingerprint": self.fingerprint, "finished": True})
            for old in self.directory.glob("epoch-*"):
                shutil.rmtree(old)


def run_fingerprint(cfg: TrainConfig, variant: VariantConfig, seed: int, world: int) -> str:
    train = asdict(cfg)
    del train["cpu_threads"]  # speed only: a run may resume with another thread count
    settings = {"train": train, "variant": asdict(variant), "seed": seed, "processes": world}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class RunResult:
    model: torch.nn.Module           # unwrapped, on the training device
    history: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    checkpoint: Checkpoint | None = None  # call .finish() once the outputs are safely written


def summarize(history: list, *, variant: str, params: int, seed: int, num_processes: int,
              device: str, wall_seconds: float, optimizer_steps: int, sync_batchnorm: bool) -> dict:
    """The per-variant metrics file: published-style percentages with two decimals."""
    best = max(history, key=lambda h: h["test_acc"])  # first epoch reaching the best
    return {
        "variant": variant,
        "params": params,
        "best_train_acc": round(max(h["train_acc"] for h in history), 2),
        "best_test_acc": round(best["test_acc"], 2),
        "best_test_epoch": best["epoch"],
        "final_test_acc": round(history[-1]["test_acc"], 2),
        "final_train_acc": round(history[-1]["train_acc"], 2),
        "min_test_loss": round(min(h["test_loss"] for h in history), 4),
        "epochs": len(history),
        "optimizer_steps": optimizer_steps,
        "train_images": history[-1]["train_images"],
        "test_images": history[-1]["test_images"],
        "seed": seed,
        "num_processes": num_processes,
        "device": device,
        "sync_batchnorm": sync_batchnorm,
        "wall_seconds": round(wall_seconds, 1),
    }


def run_training(variant: VariantConfig, cfg: TrainConfig, data_root, *, seed: int | None = None,
                 checkpoint_dir=None, accelerator: Accelerator | None = None) -> RunResult:
    """Train one variant from scratch (or resume), evaluating on the test set after each epoch."""
    accelerator = accelerator or make_accelerator()
    seed = cfg.seed if seed is None else seed
    world = accelerator.num_processes
    if cfg.batch_size % world:
        raise ParamsError(f"train.batch_size: {cfg.batch_size} is not divisible by {world} processes; "
                          f"choose a multiple of {world} or launch fewer processes")
    # Same weights on every process (DDP would broadcast rank 0's anyway), then
    # per-process streams so every process draws its own augmentation and dropout.
    if accelerator.device.type == "cpu":
        torch.set_num_threads(cpu_threads_per_process(cfg.cpu_threads))
    set_seed(seed)
    model = build_model(variant.model, variant.dropout)
    params = count_parameters(model)
    sync_bn = world > 1 and cfg.sync_batchnorm
    if sync_bn and accelerator.device.type != "cuda":
        # torch's SyncBatchNorm is CUDA-only; say so rather than crash or pretend.
        accelerator.print(f"warning: train.sync_batchnorm is ignored on {accelerator.device.type}: "
                          "each process normalises with its own share of the batch")
        sync_bn = False
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_data, test_data = load_datasets(data_root, cfg, accelerator.device)
    steps = steps_per_epoch(len(train_data), cfg.batch_size)
    optimizer = build_optimizer(model, variant)
    scheduler = build_scheduler(optimizer, variant, cfg.epochs, steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    set_seed(seed, device_specific=True)

    history, wall_before = [], 0.0
    checkpoint = (Checkpoint(Path(checkpoint_dir), run_fingerprint(cfg, variant, seed, world))
                  if checkpoint_dir else None)
    saved = checkpoint.resumable() if checkpoint else None
    if saved:
        accelerator.load_state(str(checkpoint.directory / saved["state"]))
        history, wall_before = saved["history"], saved["wall_seconds"]
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        accelerator.print(f"{variant.name}: resuming after epoch {len(history)} from {checkpoint.directory}")

    raw_model = accelerator.unwrap_model(model)
    start = time.perf_counter()
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        tr = train_one_epoch(model, optimizer, scheduler, train_data, cfg, variant, seed, epoch, accelerator)
        te = evaluate(raw_model, test_data, cfg, accelerator)
        history.append({"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"],
                        "test_loss": te["loss"], "test_acc": te["acc"], "lr": tr["lr"],
                        "steps": tr["steps"], "train_images": tr["images"], "test_images": te["images"]})
        accelerator.print(
            f"{variant.name} epoch {epoch}/{cfg.epochs}: train loss {tr['loss']:.4f} acc {tr['acc']:.2f}% | "
            f"test loss {te['loss']:.4f} acc {te['acc']:.2f}% ({round(te['acc'] * te['images'] / 100)}/{te['images']})")
        if checkpoint:
            checkpoint.save(accelerator, history, wall_before + time.perf_counter() - start, scheduler)

    metrics = summarize(history, variant=variant.name, params=params, seed=seed, num_processes=world,
                        device=accelerator.device.type, wall_seconds=wall_before + time.perf_counter() - start,
                        optimizer_steps=sum(h["steps"] for h in history), sync_batchnorm=sync_bn)
    return RunResult(raw_model, history, metrics, checkpoint)
