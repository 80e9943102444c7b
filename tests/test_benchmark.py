"""The benchmark stage's measurement on a slice: benchmark.steps 0 times one whole epoch (its
short last batch included) on all three paths, fp32, bf16 and the published DataLoader."""

from __future__ import annotations

import dataclasses
import statistics

import pytest
import torch

from mnist_repro import benchmark
from mnist_repro.benchmark import run_benchmark
from mnist_repro.config import load_params
from mnist_repro.errors import ParamsError
from mnist_repro.launch import make_accelerator

IMAGES, BATCH, REPEATS = 500, 128, 2  # one epoch: 4 steps, the last of 116 images
EPOCH_BATCHES = [128, 128, 128, 116]
ROUNDING = 0.005  # seconds are recorded to 2 decimals, rates to 1 and speed-ups to 2


def median_bounds(seconds: list) -> tuple[float, float]:
    """Where the median of the unrounded timings lies."""
    median = statistics.median(seconds)
    return max(median - ROUNDING, 1e-9), median + ROUNDING


def assert_rate(rate: float, images: int, seconds: list) -> None:
    low, high = median_bounds(seconds)
    assert images / high - 0.05 <= rate <= images / low + 0.05, (rate, images, seconds)


def assert_ratio(ratio: float, numerator: list, denominator: list) -> None:
    (num_low, num_high), (den_low, den_high) = median_bounds(numerator), median_bounds(denominator)
    assert num_low / den_high - ROUNDING <= ratio <= num_high / den_low + ROUNDING, (ratio, numerator, denominator)


@pytest.fixture(scope="module")
def small(repo_root):
    params = load_params(repo_root / "params.yaml")
    cfg = dataclasses.replace(params.train, train_limit=IMAGES, test_limit=200, batch_size=BATCH)
    return params.variant("lr_scheduler"), cfg


@pytest.fixture(scope="module")
def one_epoch(small, mnist_root):
    """run_benchmark(steps=0) with every training pass it times recorded: ours (train_one_epoch,
    with the autocast it ran under) and the baseline's training batches."""
    variant, cfg = small
    ours, baseline, logs = [], [], []
    real_epoch, real_loader = benchmark.train_one_epoch, benchmark.published_loader

    def epoch_spy(model, optimizer, scheduler, data, *args):
        device = data.images.device.type
        autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        result = real_epoch(model, optimizer, scheduler, data, *args)
        ours.append({"images": result["images"], "steps": result["steps"], "autocast": autocast})
        return result

    def loader_spy(*args, train, **kwargs):
        batches = baseline if train else []
        if train:
            baseline.append([])
        for x, y in real_loader(*args, train=train, **kwargs):
            if train:
                batches[-1].append(len(y))
            yield x, y

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(benchmark, "train_one_epoch", epoch_spy)
        mp.setattr(benchmark, "published_loader", loader_spy)
        result = run_benchmark(variant, cfg, mnist_root, steps=0, repeats=REPEATS, accelerator=make_accelerator(),
                               mixed_precision="bf16", log=logs.append)
    return dict(result=result, ours=ours, baseline=baseline, logs=logs)


def test_steps_zero_times_one_whole_epoch_on_every_path(one_epoch):
    result = one_epoch["result"]
    assert result["variant"] == "lr_scheduler" and result["steps"] == len(EPOCH_BATCHES)
    assert result["batch_size"] == BATCH and result["repeats"] == REPEATS
    # REPEATS timed passes each of fp32 and bf16, then the profile's: all of the whole epoch
    assert [(p["images"], p["steps"]) for p in one_epoch["ours"]] == [(IMAGES, 4)] * (2 * REPEATS + 1)
    assert one_epoch["baseline"] == [EPOCH_BATCHES] * REPEATS
    assert len(one_epoch["logs"]) == 3 * REPEATS


def test_the_bf16_row_is_ours_under_bf16_autocast(one_epoch):
    precisions = [p["autocast"] for p in one_epoch["ours"]]
    assert precisions.count(torch.bfloat16) == REPEATS and precisions.count(None) == REPEATS + 1
    for part, images in (("train", IMAGES), ("test", 200)):
        r = one_epoch["result"][part]
        assert all(len(r[f"{path}_seconds"]) == REPEATS for path in ("ours", "ours_bf16", "baseline"))
        assert_rate(r["ours_bf16_images_per_s"], images, r["ours_bf16_seconds"])
        assert_ratio(r["bf16_speedup"], r["ours_seconds"], r["ours_bf16_seconds"])


def test_throughputs_are_of_the_images_timed(one_epoch):
    result = one_epoch["result"]
    for part, images in (("train", IMAGES), ("test", 200)):
        r = result[part]
        # 500 images in 4 steps: the images/s are of 500 images, not 4 x 128
        assert_rate(r["ours_images_per_s"], images, r["ours_seconds"])
        assert_rate(r["baseline_images_per_s"], images, r["baseline_seconds"])
        assert_ratio(r["speedup"], r["baseline_seconds"], r["ours_seconds"])
    # the timed pass is the whole epoch, so an epoch takes what it took
    assert result["epoch_seconds_ours"] == pytest.approx(statistics.median(result["train"]["ours_seconds"]),
                                                         abs=0.06)


def test_memory_and_profile_describe_our_training_step(one_epoch):
    result = one_epoch["result"]
    assert 0 < result["peak_rss_mib_ours"] <= result["peak_rss_mib_process"]
    profile = result["profile_ours"]
    shares = [op["self_cpu_share"] for op in profile]
    assert len(profile) == 8 and len({op["op"] for op in profile}) == 8  # the top 8 distinct ops
    assert shares == sorted(shares, reverse=True) and shares[-1] > 0
    assert sum(shares) < 1 + 8 * 0.0005  # a part of the whole (each share rounded to 3 decimals)
    # a conv net's training step: convolutions (forward or backward) are among its costliest ops
    assert any("conv" in op["op"] for op in profile), profile


def test_steps_beyond_one_epoch_are_rejected(small, mnist_root):
    variant, cfg = small
    with pytest.raises(ParamsError) as info:
        run_benchmark(variant, cfg, mnist_root, steps=5, repeats=1, accelerator=make_accelerator())
    assert str(info.value) == ("benchmark.steps: 5 is more than the 4 steps of one epoch of 500 images in batches "
                               "of 128; use 0 (one epoch) or fewer")
