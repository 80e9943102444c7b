"""The batched augmentation against torchvision's own tensor transforms and the published ranges."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from mnist_repro.training.augment import (PUBLISHED, apply_params, augment_batch, inverse_affine, jitter,
                                 sample_params, warp)
from mnist_repro.core.data import load_split


@pytest.fixture(scope="module")
def digits(mnist_root):
    images, _ = load_split(mnist_root, train=False, limit=16)
    return images.unsqueeze(1).float() / 255


@pytest.fixture(scope="module")
def noise():
    # every pixel distinct: any misplaced sample shows
    return torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def batch_params(n, angle, tx, ty, scale, shear):
    return [torch.full((n,), float(v)) for v in (angle, tx, ty, scale, shear)]


AFFINE_CASES = [  # angle, (tx, ty), scale, shear, fill
    (0.0, (0, 0), 1.0, 0.0, 0.0),
    (5.3, (2, -1), 0.9, 7.5, 0.0),
    (-6.9, (-3, 3), 1.17, -9.2, 0.0),
    (3.1, (1, 0), 0.83, 2.2, 1 / 255),
    (-1.7, (0, -2), 1.04, -4.4, 0.5),
    (31.0, (3, 1), 1.19, 0.0, 0.0),  # outside the published range, same geometry
]


@pytest.mark.parametrize("angle,translate,scale,shear,fill", AFFINE_CASES)
@pytest.mark.parametrize("images", ["digits", "noise"])
def test_warp_equals_torchvision_affine(request, images, angle, translate, scale, shear, fill):
    x = request.getfixturevalue(images)
    inverse = inverse_affine(*batch_params(len(x), angle, *translate, scale, shear))
    ours = warp(x, inverse, fill)
    ref = TF.affine(x, angle=angle, translate=list(translate), scale=scale, shear=[shear, 0.0],
                    interpolation=InterpolationMode.NEAREST, fill=[fill])
    assert (ours - ref).abs().max().item() < 1e-6


@pytest.mark.parametrize("angle", [-6.0, -2.5, 0.7, 4.9, 6.0])
@pytest.mark.parametrize("fill", [1 / 255, 0.0])
def test_warp_rotation_equals_torchvision_rotate(digits, noise, angle, fill):
    for x in (digits, noise):
        zeros, ones = torch.zeros(len(x)), torch.ones(len(x))
        ours = warp(x, inverse_affine(torch.full((len(x),), angle), zeros, zeros, ones, zeros), fill)
        ref = TF.rotate(x, -angle, interpolation=InterpolationMode.NEAREST, fill=[fill])
        assert (ours - ref).abs().max().item() < 1e-6


def test_warp_uses_each_images_own_parameters(noise):
    """A batch with different parameters per image equals per-image torchvision calls."""
    cases = AFFINE_CASES[1:4]
    x = noise[:len(cases)]
    cols = list(zip(*[(a, t[0], t[1], s, sh) for a, t, s, sh, _ in cases]))
    inverse = inverse_affine(*[torch.tensor(c, dtype=torch.float32) for c in cols])
    ours = warp(x, inverse, 0.0)
    for i, (a, t, s, sh, _) in enumerate(cases):
        ref = TF.affine(x[i:i + 1], angle=a, translate=list(t), scale=s, shear=[sh, 0.0],
                        interpolation=InterpolationMode.NEAREST, fill=[0.0])
        assert (ours[i:i + 1] - ref).abs().max().item() < 1e-6


def test_apply_params_is_rotation_then_affine_then_jitter(digits):
    p = sample_params(len(digits), generator=torch.Generator().manual_seed(3))
    ours = apply_params(digits, p)
    for i in range(len(digits)):
        img = digits[i:i + 1]
        img = TF.rotate(img, -p["rotation"][i].item(), interpolation=InterpolationMode.NEAREST,
                        fill=[PUBLISHED.rotation_fill])
        img = TF.affine(img, angle=p["angle"][i].item(),
                        translate=[int(p["translate_x"][i]), int(p["translate_y"][i])],
                        scale=p["scale"][i].item(), shear=[p["shear"][i].item(), 0.0],
                        interpolation=InterpolationMode.NEAREST, fill=[PUBLISHED.affine_fill])
        b, c = p["brightness"][i].item(), p["contrast"][i].item()
        if p["contrast_first"][i]:
            img = TF.adjust_brightness(TF.adjust_contrast(img, c), b)
        else:
            img = TF.adjust_contrast(TF.adjust_brightness(img, b), c)
        torch.testing.assert_close(ours[i:i + 1], img, atol=1e-5, rtol=0)


def test_sample_params_stay_in_and_span_the_published_ranges():
    n = 10_000
    p = sample_params(n, generator=torch.Generator().manual_seed(0))
    assert all(v.shape == (n,) for v in p.values())
    bounds = {"rotation": (-6, 6), "angle": (-7, 7), "shear": (-10, 10), "scale": (0.8, 1.2),
              "brightness": (0.6, 1.4), "contrast": (0.6, 1.4)}
    for key, (lo, hi) in bounds.items():
        v = p[key]
        assert lo <= v.min().item() and v.max().item() <= hi, key
        # 10k uniform draws come within 0.2% of the width of both ends (miss chance ~ e^-20)
        slack = 0.002 * (hi - lo)
        assert v.min().item() < lo + slack and v.max().item() > hi - slack, key
    for key in ("translate_x", "translate_y"):
        v = p[key]
        assert torch.equal(v, v.round()), key
        assert sorted(v.unique().tolist()) == [-3, -2, -1, 0, 1, 2, 3], key  # 0.1 * 28 = 2.8 -> whole pixels
    assert p["contrast_first"].dtype == torch.bool
    assert 0.45 < p["contrast_first"].float().mean().item() < 0.55


def test_sample_params_draws_are_independent_per_image():
    p = sample_params(1000, generator=torch.Generator().manual_seed(1))
    assert p["rotation"].unique().numel() == 1000
    corr = torch.corrcoef(torch.stack([p["rotation"], p["angle"], p["shear"], p["scale"]]))
    assert (corr - torch.eye(4)).abs().max().item() < 0.15


def test_augment_batch_gives_every_copy_its_own_draw(digits):
    x = digits[:1].repeat(64, 1, 1, 1)
    out = augment_batch(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.unique(out.flatten(1), dim=0).shape[0] == 64
    assert out.min().item() >= 0 and out.max().item() <= 1
    # still a digit: most of the ink stays in the frame
    assert 0.5 < out.sum().item() / (64 * x[0].sum().item()) < 1.6


def test_augment_batch_stays_in_unit_range_on_extreme_inputs():
    g = torch.Generator().manual_seed(0)
    for x in (torch.ones(32, 1, 28, 28), torch.zeros(32, 1, 28, 28), torch.rand(32, 1, 28, 28, generator=g)):
        out = augment_batch(x, generator=g)
        assert out.min().item() >= 0 and out.max().item() <= 1


def test_augment_batch_follows_the_global_rng_without_generator(digits):
    torch.manual_seed(5)
    a = augment_batch(digits)
    torch.manual_seed(5)
    b = augment_batch(digits)
    assert torch.equal(a, b)


def test_jitter_order_matters_and_contrast_first_selects_it(digits):
    x = digits[:2]
    b, c = torch.tensor([1.4, 1.4]), torch.tensor([0.6, 0.6])
    bright_then_contrast = TF.adjust_contrast(TF.adjust_brightness(x, 1.4), 0.6)
    contrast_then_bright = TF.adjust_brightness(TF.adjust_contrast(x, 0.6), 1.4)
    # brightness saturates ink at 1 before contrast sees it, so the orders differ
    assert (bright_then_contrast - contrast_then_bright).abs().max().item() > 0.05

    out = jitter(x, b, c, torch.tensor([False, True]))
    torch.testing.assert_close(out[0], bright_then_contrast[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1], contrast_then_bright[1], atol=1e-6, rtol=0)
    swapped = jitter(x, b, c, torch.tensor([True, False]))
    torch.testing.assert_close(swapped[0], contrast_then_bright[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(swapped[1], bright_then_contrast[1], atol=1e-6, rtol=0)


def test_jitter_identity_factors(digits):
    ones = torch.ones(len(digits))
    for first in (True, False):
        out = jitter(digits, ones, ones, torch.full((len(digits),), first))
        torch.testing.assert_close(out, digits)
