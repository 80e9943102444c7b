"""The published data path, kept as the benchmark's baseline and for accuracy parity.

``torchvision.datasets.MNIST`` with per-image PIL transforms in a DataLoader,
exactly as the notebooks (../shared/seed/variants.md) feed their models.
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
