"""One Accelerate training loop for every variant, on 1 CPU, 1 GPU, N GPUs or N nodes.

The whole of MNIST (55 MB as uint8) sits on the training device as tensors. Each
optimiser step slices its images by index, augments them as a batch on the
device, and never touches Python per image. Across N processes each global
batch of ``batch_size`` images is split into N shares, so the optimisation
(batch, number of steps, schedule) is the same on any N; only wall time changes.

Launch (params.yaml `launch:` holds these flags for `dvc repro`; by hand):
  1 CPU or GPU:  accelerate launch stages/train.py lr_scheduler
  8 GPUs (DDP):  accelerate launch --multi_gpu --num_processes 8 stages/train.py lr_scheduler
  2 nodes x 8:   accelerate launch --multi_gpu --num_processes 16 --num_machines 2 \
                   --machine_rank $RANK --main_process_ip $HEAD --main_process_port 29500 stages/train.py lr_scheduler
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, broadcast, gather, set_seed
from tqdm.auto import tqdm

from .augment import augment_batch
from .config import LaunchConfig, TrainConfig, VariantConfig
from .errors import DivergedError, ParamsError
from .data import load_split
from .files import write_json
from .models import build_model, count_parameters

LOG_EVERY = 20  # steps between progress-bar refreshes; each one costs a host-device sync


def cpu_threads_per_process(requested: int) -> int:
    """`accelerate launch` without --cpu sets OMP_NUM_THREADS=1, which on a CPU-only
    machine leaves every core but one idle; 0 shares the cores among local processes."""
    if requested:
        return requested
    return max(1, available_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def make_accelerator() -> Accelerator:
    """The Accelerator for `accelerate launch`'s settings (processes, mixed precision).

    Without CUDA, `accelerate launch --multi_gpu --num_processes 2` would otherwise
    start two unrelated single-process runs; cpu=True makes them one gloo job.
    save_on_each_node: a node with its own disk keeps its own resume state.
    """
    cpu = not torch.cuda.is_available()
    if cpu and os.environ.get("ACCELERATE_MIXED_PRECISION") == "fp16":
        # Accelerate gives CPU fp16 no gradient scaler: small gradients would flush to zero.
        raise ParamsError("launch.mixed_precision: fp16 needs a CUDA GPU (no gradient scaler on CPU); "
                          "use bf16 or \"no\" on this machine")
    return Accelerator(cpu=cpu, project_config=ProjectConfiguration(save_on_each_node=True))


def num_machines(accelerator: Accelerator) -> int:
    # torchrun tells each process how many run on its node; the single-process launcher does not.
    return accelerator.num_processes // int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))


def check_launch(launch: LaunchConfig, accelerator: Accelerator) -> None:
    """Results filed under params.yaml must come from its launch settings, not from a
    user's Accelerate config or a hand-typed flag that DVC never saw."""
    actual = {"num_processes": accelerator.num_processes, "num_machines": num_machines(accelerator),
              "mixed_precision": accelerator.mixed_precision}
    for key, value in actual.items():
        if getattr(launch, key) != value:
            raise ParamsError(
                f"launch.{key}: params.yaml says {getattr(launch, key)!r} but this run has {value!r}; launch with "
                f"dvc.yaml's command (it passes params.yaml's launch flags) or change launch.{key}")


def describe_device(device: torch.device) -> str:
    """The GPU's name, or the CPU model and its cores: what a wall time was measured on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu} ({available_cores()} cores)"


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
    """(train, evaluation) sets; with train.holdout the evaluation set is the last
    ``holdout`` training images, so a design can be chosen without the test set."""
    train = Dataset(*load_split(data_root, train=True, limit=cfg.train_limit))
    if cfg.holdout:
        if cfg.holdout >= len(train):
            raise ParamsError(f"train.holdout: {cfg.holdout} held-out images leave none of the "
                              f"{len(train)} training images; lower it")
        cut = len(train) - cfg.holdout
        train, test = Dataset(train.images[:cut], train.labels[:cut]), Dataset(train.images[cut:], train.labels[cut:])
    else:
        test = Dataset(*load_split(data_root, train=False, limit=cfg.test_limit))
    return train.to(device), test.to(device)


def prepare_images(images_u8: torch.Tensor, cfg: TrainConfig, augment: bool) -> torch.Tensor:
    """uint8 (B, 28, 28) -> normalised float (B, 1, 28, 28), augmented as published if asked."""
    x = images_u8.unsqueeze(1).float().div_(255)
    if augment:
        x = augment_batch(x)
    x = (x - cfg.mean) / cfg.std
    return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x


def global_batches(n: int, batch_size: int, seed: int, epoch: int, device="cpu") -> list[torch.Tensor]:
    """This epoch's shuffled global batches of indices, identical on every process and device.

    Drawn on the CPU (the same order on a CPU and a GPU) and copied to ``device`` in
    one transfer per epoch, so no training step waits on a host-to-device copy.
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    if torch.device(device).type == "cuda":
        perm = perm.pin_memory()
    return list(perm.to(device, non_blocking=True).split(batch_size))


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def check_shares(n: int, batch_size: int, world: int) -> None:
    """Every process needs at least one image of every global batch: an empty share
    gives that rank a NaN mean and its BatchNorm nothing to normalise."""
    smallest = min(batch_size, n - (steps_per_epoch(n, batch_size) - 1) * batch_size)
    if smallest < world:
        raise ParamsError(
            f"train: an epoch of {n} images in batches of {batch_size} ends on a batch of {smallest}, fewer "
            f"images than the {world} processes, so a process would get none; change train.train_limit "
            f"(or train.holdout) or launch fewer processes")


def train_one_epoch(model, optimizer, scheduler, data: Dataset, cfg: TrainConfig,
                    variant: VariantConfig, seed: int, epoch: int, accelerator: Accelerator) -> dict:
    """One pass over the training set; returns loss and accuracy over all processes.

    Each process's loss is its share's *sum* scaled by N / (global batch), so DDP's
    mean over N processes is exactly the mean over the global batch, however
    unevenly the last batch splits. The step itself never waits on the host: the
    loss and accuracy are read only when the progress bar refreshes (on a terminal).
    """
    model.train()
    rank, world = accelerator.process_index, accelerator.num_processes
    dev = accelerator.device
    loss_sum = torch.zeros((), device=dev)
    correct = torch.zeros((), device=dev, dtype=torch.long)
    seen = 0
    bad_step = torch.full((), -1, device=dev, dtype=torch.long)  # first non-finite step, no sync
    batches = global_batches(len(data), cfg.batch_size, seed, epoch, dev)
    # In a log file (dvc repro's output) a bar writes a line per refresh: print per epoch instead.
    live = accelerator.is_local_main_process and sys.stderr.isatty()
    bar = tqdm(batches, disable=not live, leave=False, desc=f"{variant.name} epoch {epoch}", dynamic_ncols=True)
    lr = optimizer.param_groups[0]["lr"]
    for step, batch in enumerate(bar):
        idx = batch.tensor_split(world)[rank]
        x = prepare_images(data.images[idx], cfg, variant.augment)
        y = data.labels[idx]
        out = model(x)
        loss = F.nll_loss(out, y, reduction="sum")
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss * (world / len(batch)))
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            # Every global step, also when fp16's scaler skipped the update: the cycle is
            # a function of the step count and must end exactly at epochs x steps.
            scheduler.step()
        detached = loss.detach()
        bad_step = torch.where((bad_step < 0) & ~torch.isfinite(detached), step, bad_step)
        loss_sum += detached
        correct += (out.argmax(1) == y).sum()
        seen += len(y)
        if live and step % LOG_EVERY == 0:
            _check_finite(bad_step, variant, epoch)
            bar.set_postfix_str(f"at batch {step}: Loss={detached.item() / len(y):.4f} "
                                f"Accuracy={100 * correct.item() / seen:.2f}", refresh=False)
    _check_finite(bad_step, variant, epoch)
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
    dev = accelerator.device
    share = torch.arange(len(data), device=dev).tensor_split(accelerator.num_processes)[accelerator.process_index]
    loss_sum = torch.zeros((), device=dev)
    correct = torch.zeros((), device=dev)
    for idx in share.split(cfg.eval_batch_size):
        with accelerator.autocast():  # the precision the run trains in
            out = model(prepare_images(data.images[idx], cfg, augment=False)).float()
        y = data.labels[idx]
        loss_sum += F.nll_loss(out, y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
    totals = accelerator.reduce(torch.stack([loss_sum, correct,
                                             torch.tensor(float(len(share)), device=dev)]), "sum")
    loss_total, correct_total, n = totals.tolist()
    return {"loss": loss_total / n, "acc": 100 * correct_total / n, "images": int(n)}


def build_optimizer(model, variant: VariantConfig) -> torch.optim.Optimizer:
    """SGD as published (optimizer sgd, weight_decay 0: torch's plain branch, the published
    steps bit for bit), its Nesterov form, or Adam with beta1 = momentum; under OneCycleLR
    either's momentum (SGD's, Adam's beta1) follows the cycle's 0.85-0.95."""
    if variant.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=variant.lr, betas=(variant.momentum, 0.999),
                                weight_decay=variant.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=variant.lr, momentum=variant.momentum,
                           weight_decay=variant.weight_decay, nesterov=variant.optimizer == "nesterov")


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
    resumed. Each node keeps its own copy under ``node-<k>``, written by its local
    main process, so nodes with separate disks can all resume; rank 0 decides the
    epoch (see ``agreed_resume``). A finished run deletes its states and leaves
    only a finished manifest.
    """
    root: Path
    fingerprint: str
    node: int = 0

    @property
    def directory(self) -> Path:
        return self.root / f"node-{self.node}"

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
        if accelerator.is_local_main_process:
            write_json(self.manifest, {
                "fingerprint": self.fingerprint, "state": state, "history": history,
                "wall_seconds": wall_seconds,
                "scheduler": scheduler.state_dict() if scheduler is not None else None})
            self._prune(keep=state)
        accelerator.wait_for_everyone()

    def finish(self, accelerator: Accelerator) -> None:
        if accelerator.is_local_main_process:
            write_json(self.manifest, {"fingerprint": self.fingerprint, "finished": True})
            self._prune(keep=None)

    def _prune(self, keep: str | None) -> None:
        for old in self.directory.glob("epoch-*"):
            if old.name != keep:
                shutil.rmtree(old)


def agreed_resume(checkpoint: Checkpoint, accelerator: Accelerator) -> dict | None:
    """The state every process resumes from: rank 0's newest, if every node holds it.

    Otherwise all start over together; one node resuming while another starts
    at epoch 1 would wait forever in mismatched collectives.
    """
    saved = checkpoint.resumable()
    if accelerator.num_processes == 1:
        return saved
    mine = len(saved["history"]) if saved else 0
    chosen = int(broadcast(torch.tensor([mine], device=accelerator.device), from_process=0).item())
    have = gather(torch.tensor([int(mine == chosen)], device=accelerator.device))
    if chosen and not bool(have.all()):
        accelerator.print(f"rank 0 would resume after epoch {chosen} but a node lacks that state "
                          f"in {checkpoint.root}/node-*: starting over on every node")
        return None
    return saved if chosen else None


def run_fingerprint(cfg: TrainConfig, variant: VariantConfig, seed: int, accelerator: Accelerator) -> str:
    train = asdict(cfg)
    del train["cpu_threads"]  # speed only: a run may resume with another thread count
    settings = {"train": train, "variant": asdict(variant), "seed": seed,
                "processes": accelerator.num_processes, "machines": num_machines(accelerator),
                "device": accelerator.device.type, "mixed_precision": accelerator.mixed_precision}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class RunResult:
    model: torch.nn.Module           # unwrapped, on the training device
    history: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    checkpoint: Checkpoint | None = None  # call .finish() once the outputs are safely written
    evaluation: Dataset | None = None     # the images the history's test columns were measured on


def summarize(history: list, *, variant: str, params: int, seed: int, optimizer_steps: int,
              wall_seconds: float, launch: dict) -> dict:
    """The per-run summary: published-style percentages with two decimals, and how it ran."""
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
        **launch,
        "wall_seconds": round(wall_seconds, 1),
    }


def launch_record(accelerator: Accelerator, sync_batchnorm: bool, holdout: int) -> dict:
    """What a result depends on beyond params: where and how it ran."""
    return {
        "evaluated_on": f"holdout (last {holdout} training images)" if holdout else "test",
        "num_processes": accelerator.num_processes,
        "num_machines": num_machines(accelerator),
        "device": accelerator.device.type,
        "device_name": describe_device(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        "sync_batchnorm": sync_batchnorm,
        "torch": torch.__version__,
    }


@torch.no_grad()
def misclassified(result: "RunResult", cfg: TrainConfig, accelerator: Accelerator) -> dict:
    """Every evaluation image the trained model gets wrong (index, true and predicted
    label), computed where the model lives so the report only reads files.
    Call it on one process after training."""
    model, data = result.model, result.evaluation
    model.eval()
    wrong = []
    for idx in torch.arange(len(data), device=accelerator.device).split(cfg.eval_batch_size):
        with accelerator.autocast():
            predicted = model(prepare_images(data.images[idx], cfg, augment=False)).argmax(1)
        miss = predicted != data.labels[idx]
        wrong += [{"index": i, "label": t, "predicted": p} for i, t, p in zip(
            idx[miss].tolist(), data.labels[idx][miss].tolist(), predicted[miss].tolist())]
    return {"variant": result.metrics["variant"], "seed": result.metrics["seed"],
            "evaluated_on": result.metrics["evaluated_on"], "test_images": len(data), "misclassified": wrong}


def run_training(variant: VariantConfig, cfg: TrainConfig, data_root, *, seed: int | None = None,
                 checkpoint_dir=None, accelerator: Accelerator | None = None) -> RunResult:
    """Train one variant from scratch (or resume), evaluating on the test set after each epoch."""
    accelerator = accelerator or make_accelerator()
    seed = cfg.seed if seed is None else seed
    world = accelerator.num_processes
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
    check_shares(len(train_data), cfg.batch_size, world)
    steps = steps_per_epoch(len(train_data), cfg.batch_size)
    optimizer = build_optimizer(model, variant)
    scheduler = build_scheduler(optimizer, variant, cfg.epochs, steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    set_seed(seed, device_specific=True)

    history, wall_before = [], 0.0
    checkpoint = None
    if checkpoint_dir:
        node = accelerator.process_index // (world // num_machines(accelerator))
        checkpoint = Checkpoint(Path(checkpoint_dir), run_fingerprint(cfg, variant, seed, accelerator), node)
    saved = agreed_resume(checkpoint, accelerator) if checkpoint else None
    if saved:
        accelerator.load_state(str(checkpoint.directory / saved["state"]))
        history, wall_before = saved["history"], saved["wall_seconds"]
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        accelerator.print(f"{variant.name}: resuming after epoch {len(history)} from {checkpoint.root}")

    raw_model = accelerator.unwrap_model(model)
    start = time.perf_counter()
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        epoch_start = time.perf_counter()
        tr = train_one_epoch(model, optimizer, scheduler, train_data, cfg, variant, seed, epoch, accelerator)
        te = evaluate(raw_model, test_data, cfg, accelerator)
        seconds = time.perf_counter() - epoch_start  # training and test pass, not the checkpoint
        history.append({"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"],
                        "test_loss": te["loss"], "test_acc": te["acc"], "lr": tr["lr"],
                        "steps": tr["steps"], "train_images": tr["images"], "test_images": te["images"],
                        "seconds": round(seconds, 2)})
        accelerator.print(
            f"{variant.name} epoch {epoch}/{cfg.epochs}: train loss {tr['loss']:.4f} acc {tr['acc']:.2f}% | "
            f"test loss {te['loss']:.4f} acc {te['acc']:.2f}% ({round(te['acc'] * te['images'] / 100)}/{te['images']}) "
            f"| {seconds:.1f} s")
        if checkpoint:
            checkpoint.save(accelerator, history, wall_before + time.perf_counter() - start, scheduler)

    metrics = summarize(history, variant=variant.name, params=params, seed=seed,
                        optimizer_steps=sum(h["steps"] for h in history),
                        wall_seconds=wall_before + time.perf_counter() - start,
                        launch=launch_record(accelerator, sync_bn, cfg.holdout))
    return RunResult(raw_model, history, metrics, checkpoint, test_data)
