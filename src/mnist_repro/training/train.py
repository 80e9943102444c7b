"""One Accelerate training loop for every variant, on 1 CPU, 1 GPU, N GPUs or N nodes.

The data sit on the training device (device_data.py). Across N processes each global
batch of ``batch_size`` images is split into N shares, so the optimisation (global
batch, number of steps, schedule) is the same on any N. The numbers are not bit for
bit the same: each process draws its own augmentation and dropout, and on a CPU each
normalises BatchNorm over its own share (torch's SyncBatchNorm is CUDA-only), so an
N-process run is another sample of the experiment; by how much its results differ from
one process's has not been measured here (docs/distributed.md). How to launch: launch.py.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from .checkpoint import Checkpoint, agreed_resume, check_threads, keyed_root, resume_home, run_fingerprint
from ..core.config import Params, TrainConfig, VariantConfig
from .device_data import DeviceData, check_shares, global_batches, load_datasets, prepare_images, steps_per_epoch
from ..core.errors import DivergedError
from ..core.files import atomic_path, write_json
from .launch import check_launch, cpu_threads_per_process, describe_device, make_accelerator, node_index
from ..core.models import build_model, count_parameters
from .speed import check_compile, keep_freed_memory
from .summary import history_row, launch_record, misclassified, segment, summarize, summary_lines

LOG_EVERY = 20  # steps between progress-bar refreshes; each one costs a host-device sync
QUICK = {"epochs": 1, "train_limit": 2048, "test_limit": 1000}  # stages/train.py --quick: a look, not a result


def step_forward(model, cfg: TrainConfig, variant: VariantConfig):
    """The forward half of a training step, ``(images uint8, labels) -> (summed loss, correct)``:
    batch preparation and augmentation, the model, the loss and the step's accuracy count.
    Under train.compile, torch.compile'd (inductor, static shapes: one graph for the full
    batches, one more for an epoch's short last batch; later runs load both from inductor's
    on-disk cache); backward then runs the compiled backward graph made with it."""
    def forward(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(prepare_images(images, cfg, variant.augment))
        return F.nll_loss(out, labels, reduction="sum"), (out.argmax(1) == labels).sum()

    return torch.compile(forward, dynamic=False) if cfg.compile else forward


def train_one_epoch(model, optimizer, scheduler, data: DeviceData, cfg: TrainConfig,
                    variant: VariantConfig, seed: int, epoch: int, accelerator: Accelerator,
                    forward=None) -> dict:
    """One pass over the training set; returns loss and accuracy over all processes.

    Each process's loss is its share's *sum* scaled by N / (global batch), so DDP's
    mean over N processes is exactly the mean over the global batch, however
    unevenly the last batch splits. The step itself never waits on the host: the
    loss and accuracy are read only when the progress bar refreshes (on a terminal).
    ``forward``: the run's step_forward (built once, so a compiled one compiles once);
    None builds it.
    """
    forward = forward or step_forward(model, cfg, variant)
    model.train()
    rank, world = accelerator.process_index, accelerator.num_processes
    dev = accelerator.device
    loss_sum = torch.zeros((), device=dev)
    correct = torch.zeros((), device=dev, dtype=torch.long)
    seen = 0
    bad_step = torch.full((), -1, device=dev, dtype=torch.long)  # first non-finite step, no sync
    batches = global_batches(len(data), cfg.batch_size, seed, epoch, dev)
    # A bar only on a terminal: stderr, or stdout where the launcher pipes stderr (Accelerate
    # tees it: mnist_repro.training.launch, also under `dvc repro`). In a log file (the matrix's logs, a
    # captured output) a bar writes a line per refresh: print per epoch instead.
    tty = next((stream for stream in (sys.stderr, sys.stdout) if stream.isatty()), None)
    live = accelerator.is_local_main_process and tty is not None
    bar = tqdm(batches, disable=not live, file=tty, leave=False, desc=f"{variant.name} epoch {epoch}",
               dynamic_ncols=True)
    lr = optimizer.param_groups[0]["lr"]
    for step, batch in enumerate(bar):
        idx = batch.tensor_split(world)[rank]
        y = data.labels[idx]
        loss, step_correct = forward(data.images[idx], y)
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
        correct += step_correct
        seen += len(y)
        if live and step % LOG_EVERY == 0:
            if world == 1:  # N processes stop together, at the epoch's end
                _check_finite(bad_step, variant, epoch)
            bar.set_postfix_str(f"at batch {step}: Loss={detached.item() / len(y):.4f} "
                                f"Accuracy={100 * correct.item() / seen:.2f}", refresh=False)
    if world > 1:  # the first step any process saw, so every process stops here, with one message
        never = torch.iinfo(torch.long).max
        first = torch.where(bad_step < 0, never, bad_step)
        torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MIN)
        bad_step = torch.where(first == never, -1, first)
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
            f"lower {variant.SECTION}.{variant.name}.lr or check the data. No metrics were written.")


@torch.no_grad()
def evaluate(model, data: DeviceData, cfg: TrainConfig, accelerator: Accelerator) -> dict:
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


def has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@dataclass
class RunResult:
    model: torch.nn.Module           # unwrapped, on the training device
    history: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    checkpoint: Checkpoint | None = None  # call .finish() once the outputs are safely written
    evaluation: DeviceData | None = None  # the images the history's test columns were measured on


def run_training(variant: VariantConfig, cfg: TrainConfig, data_root, *, seed: int | None = None,
                 checkpoint_dir=None, resume_in=None, accelerator: Accelerator | None = None) -> RunResult:
    """Train one variant from scratch (or resume), evaluating on the test set after each epoch.
    Resume state: in ``checkpoint_dir``, or in this run's own folder under ``resume_in``
    (checkpoint.keyed_root); neither: none."""
    accelerator = accelerator or make_accelerator()
    seed = cfg.seed if seed is None else seed
    world = accelerator.num_processes
    if cfg.compile:
        check_compile(accelerator.device)  # one line naming train.compile, before any work
    kept_memory = cfg.keep_freed_memory and keep_freed_memory()
    # Same weights on every process (DDP would broadcast rank 0's anyway), then
    # per-process streams so every process draws its own augmentation and dropout.
    if accelerator.device.type == "cpu":
        torch.set_num_threads(cpu_threads_per_process(cfg.cpu_threads))
    set_seed(seed)
    model = build_model(variant.model, variant.dropout)
    params = count_parameters(model)
    sync_bn = world > 1 and cfg.sync_batchnorm and has_batchnorm(model)
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
    forward = step_forward(model, cfg, variant)
    set_seed(seed, device_specific=True)

    history, wall_before, segments, override = [], 0.0, [], None  # segments: earlier sessions'
    checkpoint = None
    if checkpoint_dir or resume_in:
        fingerprint = run_fingerprint(cfg, variant, seed, accelerator)
        root = Path(checkpoint_dir) if checkpoint_dir else keyed_root(resume_in, variant.name, seed, fingerprint)
        checkpoint = Checkpoint(root, fingerprint, node_index(accelerator), keyed=not checkpoint_dir)
        saved = agreed_resume(checkpoint, accelerator)
        if saved:  # the same thread count, or stop (or the override, recorded)
            override = check_threads(saved, torch.get_num_threads(), accelerator, root, cfg.cpu_threads)
        if saved and checkpoint.restore(accelerator, saved, model, optimizer, scheduler, seed):
            history, wall_before, segments = list(saved["history"]), saved["wall_seconds"], list(saved["segments"])
            accelerator.print(f"{variant.name}: resuming after epoch {len(history)} from {checkpoint.root}")
        else:
            override = None
            accelerator.print(f"{variant.name} seed {seed}: from epoch 1, saving each finished epoch in {root}")
    device_name, first, session_start = describe_device(accelerator.device), len(history) + 1, time.time()

    raw_model = accelerator.unwrap_model(model)
    start = time.perf_counter()
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        epoch_start = time.perf_counter()
        tr = train_one_epoch(model, optimizer, scheduler, train_data, cfg, variant, seed, epoch, accelerator,
                             forward)
        te = evaluate(raw_model, test_data, cfg, accelerator)
        seconds = time.perf_counter() - epoch_start  # training and test pass, not the checkpoint
        history.append(history_row(epoch, tr, te, seconds))
        accelerator.print(
            f"{variant.name} epoch {epoch}/{cfg.epochs}: train loss {tr['loss']:.4f} acc {tr['acc']:.2f}% | "
            f"test loss {te['loss']:.4f} acc {te['acc']:.2f}% ({round(te['acc'] * te['images'] / 100)}/{te['images']}) "
            f"| {seconds:.1f} s")
        this_session = segment(first, epoch, started=session_start, ended=time.time(), device_name=device_name,
                               override=override)
        if checkpoint:
            checkpoint.save(accelerator, history, wall_before + time.perf_counter() - start, scheduler,
                            [*segments, this_session])
    if len(history) >= first:
        segments.append(this_session)

    metrics = summarize(history, variant=variant.name, params=params, seed=seed,
                        wall_seconds=wall_before + time.perf_counter() - start,
                        launch=launch_record(accelerator, sync_batchnorm=sync_bn, holdout=cfg.holdout,
                                             compiled=cfg.compile, kept_memory=kept_memory),
                        segments=segments)
    return RunResult(raw_model, history, metrics, checkpoint, test_data)


def train_and_write(params: Params, variant: str, data_root, *, seed: int | None = None,
                    train_overrides: dict | None = None, mixed_precision: str | None = None,
                    metrics=None, history=None, model=None, errors=None, checkpoint=None,
                    resume: bool = False) -> RunResult:
    """The training stage: train ``variant`` (params.train with ``train_overrides``) and write
    the outputs asked for. A run that writes metrics is filed under params.yaml, so it must
    have params.launch's settings (``mixed_precision`` replaces its precision). Resume state:
    in the folder ``checkpoint``, or with ``resume`` in its own under checkpoint.resume_home()."""
    cfg = dataclasses.replace(params.train, **(train_overrides or {}))
    recipe = params.variant(variant)  # validated before anything heavy starts
    accelerator = make_accelerator()
    if metrics:
        launch = params.launch
        if mixed_precision:
            launch = dataclasses.replace(launch, mixed_precision=mixed_precision)
        check_launch(launch, accelerator)
    result = run_training(recipe, cfg, data_root, seed=seed, checkpoint_dir=checkpoint,
                          resume_in=resume_home() if resume and not checkpoint else None, accelerator=accelerator)
    # Every node writes its own copy: `dvc repro` on each node then finds its outputs.
    if accelerator.is_local_main_process:
        if errors:
            write_json(errors, misclassified(result, cfg, accelerator))
        if history:
            write_json(history, result.history)
        if model:
            with atomic_path(model) as tmp:
                torch.save(result.model.state_dict(), tmp)
        if metrics:
            write_json(metrics, result.metrics)
        for line in summary_lines(result.metrics, metrics):  # the JSON is the run file's
            accelerator.print(line)
    accelerator.wait_for_everyone()
    if result.checkpoint:
        result.checkpoint.finish(accelerator)
    accelerator.end_training()
    return result
