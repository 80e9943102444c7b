"""The published data path, kept as the benchmark's baseline and for accuracy parity.

``torchvision.datasets.MNIST`` with per-image PIL transforms in a DataLoader,
exactly as the notebooks (reference/variants.md) feed their models.
"""

from __future__ import annotations

import torch
from torchvision import datasets, transforms


def published_transforms(mean: float, std: float, augment: bool) -> transforms.Compose:
    augmentation = [
        transforms.RandomRotation((-6.0, 6.0), fill=(1,)),
        transforms.RandomAffine(degrees=7, shear=10, translate=(0.1, 0.1), scale=(0.8, 1.2)),
        transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1),
    ] if augment else []
    return transforms.Compose([*augmentation, transforms.ToTensor(), transforms.Normalize((mean,), (std,))])


def published_loader(data_root, *, train: bool, mean: float, std: float, augment: bool,
                     batch_size: int = 128, limit: int = 0, num_workers: int = 1) -> torch.utils.data.DataLoader:
    dataset = datasets.MNIST(str(data_root), train=train, download=False,
                             transform=published_transforms(mean, std, augment and train))
    if limit:
        dataset = torch.utils.data.Subset(dataset, range(limit))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=train,
                                       num_workers=num_workers, pin_memory=torch.cuda.is_available())


def train_published(model, optimizer, scheduler, train_loader, test_loader, epochs: int, log=print) -> list[dict]:
    """The notebooks' train/test loop, kept as plain as published; returns per-epoch numbers."""
    import torch.nn.functional as F

    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in train_loader:
            out = model(x)
            loss = F.nll_loss(out, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            seen += len(y)
        model.eval()
        test_loss, test_correct, n = 0.0, 0, 0
        with torch.no_grad():
            for x, y in test_loader:
                out = model(x)
                test_loss += F.nll_loss(out, y, reduction="sum").item()
                test_correct += (out.argmax(1) == y).sum().item()
                n += len(y)
        history.append({"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": 100 * correct / seen,
                        "test_loss": test_loss / n, "test_acc": 100 * test_correct / n})
        log(f"published path epoch {epoch}/{epochs}: train acc {100 * correct / seen:.2f}% | "
            f"test loss {test_loss / n:.4f} acc {100 * test_correct / n:.2f}%")
    return history
