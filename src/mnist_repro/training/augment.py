"""The published per-image augmentation, computed for a whole batch at once on its device.

Published (variants 5 and 6), per PIL image, in this order::

    RandomRotation((-6, 6), fill=1)          # fill is 1 of 255: near black
    RandomAffine(degrees=7, shear=10, translate=(0.1, 0.1), scale=(0.8, 1.2))  # fill 0
    ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)

Here every image still gets its own random draw from the same ranges, with the
same geometry as torchvision (its inverse-affine formula, nearest-neighbour
sampling, integer-pixel translation) and the same fills, but as two
``grid_sample`` calls and a few tensor ops per batch instead of three PIL calls
per image. On a one-channel image saturation and hue do nothing, so ColorJitter
reduces to brightness and contrast, applied in a random order per image as
torchvision's random permutation of the four jitters does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentRanges:
    rotation: float = 6.0        # degrees, uniform in [-r, r]
    affine_degrees: float = 7.0  # degrees, uniform in [-d, d]
    shear: float = 10.0          # degrees of x-shear, uniform in [-s, s]
    translate: float = 0.1       # fraction of width/height, rounded to whole pixels
    scale: tuple = (0.8, 1.2)    # uniform
    brightness: float = 0.4      # factor uniform in [1 - b, 1 + b]
    contrast: float = 0.4        # factor uniform in [1 - c, 1 + c]
    rotation_fill: float = 1 / 255
    affine_fill: float = 0.0


PUBLISHED = AugmentRanges()


def inverse_affine(angle, translate_x, translate_y, scale, shear_x) -> torch.Tensor:
    """(N, 2, 3) output->input maps in pixels about the image centre.

    Vectorised ``torchvision.transforms.functional._get_inverse_affine_matrix``
    with centre (0, 0) and no y-shear; angles in degrees. ``warp`` with it equals
    ``F.affine(angle=angle, ...)`` on a tensor and ``F.rotate(-angle)``; the
    published ranges are symmetric, so the sign convention does not matter.
    """
    rot, sx = torch.deg2rad(angle), torch.deg2rad(shear_x)
    # rotation-shear matrix RSS = [[a, b], [c, d]], det 1; torchvision's formula with sy = 0
    a, c = torch.cos(rot), torch.sin(rot)
    b = -torch.cos(rot) * torch.tan(sx) - torch.sin(rot)
    d = -torch.sin(rot) * torch.tan(sx) + torch.cos(rot)
    m00, m01, m10, m11 = d / scale, -b / scale, -c / scale, a / scale
    return torch.stack([
        torch.stack([m00, m01, -(m00 * translate_x + m01 * translate_y)], dim=-1),
        torch.stack([m10, m11, -(m10 * translate_x + m11 * translate_y)], dim=-1),
    ], dim=1)


def warp(images: torch.Tensor, inverse: torch.Tensor, fill: float) -> torch.Tensor:
    """Nearest-neighbour warp of (N, 1, H, W) by pixel-space inverse maps, `fill` outside."""
    n, _, h, w = images.shape
    theta = inverse.clone()
    # pixel offsets -> affine_grid's normalised [-1, 1] coordinates (align_corners=False)
    theta[:, 0, 2] /= w / 2
    theta[:, 1, 2] /= h / 2
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # zeros padding on (x - fill) + fill == `fill` padding, exactly, under nearest sampling
    return F.grid_sample(images - fill, grid, mode="nearest", padding_mode="zeros",
                         align_corners=False) + fill


def jitter(images: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
           contrast_first: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_brightness / adjust_contrast (per-image factors), in per-image order."""
    def bright(x):
        return (x * brightness.view(-1, 1, 1, 1)).clamp(0, 1)

    def contr(x):
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        c = contrast.view(-1, 1, 1, 1)
        return (c * x + (1 - c) * mean).clamp(0, 1)

    first = contrast_first.view(-1, 1, 1, 1)
    return torch.where(first, bright(contr(images)), contr(bright(images)))


def sample_params(n: int, ranges: AugmentRanges = PUBLISHED, device=None,
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """One independent draw per image, as torchvision's get_params would make."""
    def uniform(lo, hi):
        return torch.rand(n, device=device, generator=generator) * (hi - lo) + lo

    max_translate = ranges.translate * 28
    return {
        "rotation": uniform(-ranges.rotation, ranges.rotation),
        "angle": uniform(-ranges.affine_degrees, ranges.affine_degrees),
        # torchvision: int(round(uniform(-max_dx, max_dx))), whole pixels
        "translate_x": torch.round(uniform(-max_translate, max_translate)),
        "translate_y": torch.round(uniform(-max_translate, max_translate)),
        "scale": uniform(*ranges.scale),
        "shear": uniform(-ranges.shear, ranges.shear),
        "brightness": uniform(1 - ranges.brightness, 1 + ranges.brightness),
        "contrast": uniform(1 - ranges.contrast, 1 + ranges.contrast),
        "contrast_first": torch.rand(n, device=device, generator=generator) < 0.5,
    }


def apply_params(images: torch.Tensor, p: dict[str, torch.Tensor],
                 ranges: AugmentRanges = PUBLISHED) -> torch.Tensor:
    """Rotation, then affine, then jitter: the published order."""
    zeros, ones = torch.zeros_like(p["scale"]), torch.ones_like(p["scale"])
    images = warp(images, inverse_affine(p["rotation"], zeros, zeros, ones, zeros), ranges.rotation_fill)
    images = warp(images, inverse_affine(p["angle"], p["translate_x"], p["translate_y"], p["scale"], p["shear"]),
                  ranges.affine_fill)
    return jitter(images, p["brightness"], p["contrast"], p["contrast_first"])


def augment_batch(images: torch.Tensor, ranges: AugmentRanges = PUBLISHED,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment (N, 1, 28, 28) float images in [0, 1]; each image gets its own random draw."""
    return apply_params(images, sample_params(len(images), ranges, images.device, generator), ranges)
