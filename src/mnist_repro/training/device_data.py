"""MNIST held on the training device as tensors, and the batches a step slices from it.

The whole of MNIST (55 MB as uint8) sits on the device. Each optimiser step slices its
images by index and augments them as a batch there, never touching Python per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .augment import augment_batch
from ..core.config import TrainConfig
from ..core.data import load_split
from ..core.errors import ParamsError


@dataclass
class DeviceData:
    """Images as uint8 (N, 28, 28) and labels (N,) on the training device."""
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self):
        return len(self.labels)

    def to(self, device) -> "DeviceData":
        return DeviceData(self.images.to(device), self.labels.to(device))

    def head(self, n: int) -> "DeviceData":
        return DeviceData(self.images[:n], self.labels[:n])

    def tail(self, n: int) -> "DeviceData":
        return DeviceData(self.images[len(self) - n:], self.labels[len(self) - n:])


def load_datasets(data_root, cfg: TrainConfig, device) -> tuple[DeviceData, DeviceData]:
    """(train, evaluation) sets; with train.holdout the evaluation set is the last
    ``holdout`` training images, so a design can be chosen without the test set."""
    train = DeviceData(*load_split(data_root, train=True, limit=cfg.train_limit))
    if cfg.holdout:
        if cfg.holdout >= len(train):
            raise ParamsError(f"train.holdout: {cfg.holdout} held-out images leave none of the "
                              f"{len(train)} training images; lower it")
        train, test = train.head(len(train) - cfg.holdout), train.tail(cfg.holdout)
    else:
        test = DeviceData(*load_split(data_root, train=False, limit=cfg.test_limit))
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
