"""The published notebooks' data path, rerun here: the accuracy check of our speed work
and the benchmark's baseline.

``torchvision.datasets.MNIST`` with per-image PIL transforms in a DataLoader, and the
notebooks' train/test loop, exactly as they feed their models (reference/variants.md).
One implementation of that loop (``train_epoch`` / ``test_epoch``), used by the
published_path stage (``rerun_and_write``) and by benchmark.py's timing.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torchvision import datasets, transforms

from ..core.config import Params
from ..core.data import require_mnist
from ..core.files import write_json
from .launch import cpu_threads_per_process
from ..core.models import build_model, count_parameters
from .summary import history_row, launch_record, summarize
from .train import build_optimizer, build_scheduler


def published_transforms(mean: float, std: float, augment: bool) -> transforms.Compose:
    augmentation = [
        transforms.RandomRotation((-6.0, 6.0), fill=(1,)),
        transforms.RandomAffine(degrees=7, shear=10, translate=(0.1, 0.1), scale=(0.8, 1.2)),
        transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1),
    ] if augment else []
    return transforms.Compose([*augmentation, transforms.ToTensor(), transforms.Normalize((mean,), (std,))])


def published_loader(data_root, *, train: bool, mean: float, std: float, augment: bool,
                     batch_size: int = 128, limit: int = 0, num_workers: int = 1) -> torch.utils.data.DataLoader:
    require_mnist(data_root)
    dataset = datasets.MNIST(str(data_root), train=train, download=False,
                             transform=published_transforms(mean, std, augment and train))
    if limit:
        dataset = torch.utils.data.Subset(dataset, range(limit))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=train,
                                       num_workers=num_workers, pin_memory=torch.cuda.is_available())


def train_epoch(model, optimizer, scheduler, loader) -> dict:
    """The notebooks' training pass, kept as plain as published (it reads the loss and the
    accuracy every batch, for its progress bar)."""
    model.train()
    loss_sum, correct, seen, steps = 0.0, 0, 0, 0
    lr = optimizer.param_groups[0]["lr"]
    for x, y in loader:
        out = model(x)
        loss = F.nll_loss(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.item() * len(y)
        correct += (out.argmax(1) == y).sum().item()
        seen += len(y)
        steps += 1
    return {"loss": loss_sum / seen, "acc": 100 * correct / seen, "images": seen, "steps": steps, "lr": lr}


@torch.no_grad()
def test_epoch(model, loader) -> dict:
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in loader:
        out = model(x)
        loss_sum += F.nll_loss(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
        n += len(y)
    return {"loss": loss_sum / n, "acc": 100 * correct / n, "images": n}


def train_published(model, optimizer, scheduler, train_loader, test_loader, epochs: int, log=print) -> list[dict]:
    """The notebooks' train/test loop; returns per-epoch numbers in our history's form (summary.history_row)."""
    history = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        tr = train_epoch(model, optimizer, scheduler, train_loader)
        te = test_epoch(model, test_loader)
        history.append(history_row(epoch, tr, te, time.perf_counter() - start))
        log(f"published path epoch {epoch}/{epochs}: train acc {tr['acc']:.2f}% | "
            f"test loss {te['loss']:.4f} acc {te['acc']:.2f}%")
    return history


def rerun_and_write(params: Params, variant: str, data_root, *, seed: int | None = None,
                    metrics, history) -> dict:
    """The published_path stage: train ``variant`` the published way with ``seed`` (default
    train.seed) and write its history and run summary (our keys, data_path "published")."""
    recipe, cfg = params.variant(variant), params.train
    seed = cfg.seed if seed is None else seed
    start = time.perf_counter()
    torch.set_num_threads(cpu_threads_per_process(cfg.cpu_threads))  # as our path: train.cpu_threads
    torch.manual_seed(seed)  # as the notebooks do, before building the model
    model = build_model(recipe.model, recipe.dropout)
    kwargs = dict(mean=cfg.mean, std=cfg.std, batch_size=cfg.batch_size, augment=recipe.augment)
    train_loader = published_loader(data_root, train=True, limit=cfg.train_limit, **kwargs)
    test_loader = published_loader(data_root, train=False, limit=cfg.test_limit, **kwargs)
    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe, cfg.epochs, len(train_loader))
    runs = train_published(model, optimizer, scheduler, train_loader, test_loader, cfg.epochs)
    summary = summarize(runs, variant=recipe.name, params=count_parameters(model), seed=seed,
                        wall_seconds=time.perf_counter() - start, launch=launch_record(), data_path="published")
    write_json(history, runs)
    write_json(metrics, summary)
    return summary
