"""The benchmark stage's measurement on a slice: benchmark.steps 0 times one whole epoch (its
short last batch included) on every path, each repeat of each path in its own process: the
published DataLoader path, our eager path as it ran before the speed levers, the default
(params.yaml's train settings), the default under bf16 autocast, and the compiled path."""

from __future__ import annotations

import dataclasses
import statistics

import pytest
import torch

from mnist_repro.training import benchmark
from mnist_repro.training.benchmark import run_benchmark
from mnist_repro.core.config import load_params
from mnist_repro.core.errors import ParamsError
from mnist_repro.training.launch import cpu_threads_per_process

IMAGES, TEST, BATCH, REPEATS = 500, 200, 128, 2  # one epoch: 4 steps, the last of 116 images
EPOCH_BATCHES = [128, 128, 128, 116]
ROUNDING = 0.005  # seconds are recorded to 2 decimals, rates to 1 and speed-ups to 2
PATHS = ["published", "eager", "default", "default_bf16", "compiled"]


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
    cfg = dataclasses.replace(params.train, train_limit=IMAGES, test_limit=TEST, batch_size=BATCH)
    return params.variant("lr_scheduler"), cfg


@pytest.fixture(scope="module")
def one_epoch(small, mnist_root):
    """run_benchmark(steps=0): every path, REPEATS times, each in its own process."""
    variant, cfg = small
    assert not cfg.compile and cfg.keep_freed_memory  # the default these tests describe (params.yaml)
    logs = []
    result = run_benchmark(variant, cfg, mnist_root, steps=0, repeats=REPEATS, mixed_precision="bf16",
                           log=logs.append)
    return dict(result=result, logs=logs)


@pytest.mark.slow
def test_steps_zero_times_one_whole_epoch_on_every_path(one_epoch, small):
    result, threads = one_epoch["result"], cpu_threads_per_process(small[1].cpu_threads)
    assert result["variant"] == "lr_scheduler" and result["steps"] == len(EPOCH_BATCHES)
    assert result["batch_size"] == BATCH and result["repeats"] == REPEATS and result["baseline"] == "published"
    assert list(result["paths"]) == PATHS and result["skipped"] == {}
    for name, row in result["paths"].items():
        # the published row's batches are the ones its DataLoader yielded
        assert (row["images"], row["steps"], row["batches"]) == (IMAGES, 4, EPOCH_BATCHES), name
        assert len(row["train_seconds"]) == len(row["test_seconds"]) == REPEATS
        assert row["torch_threads"] == threads  # train.cpu_threads, on every path


@pytest.mark.slow
def test_repeats_alternate_which_path_goes_first(one_epoch):
    order = [line.split()[2].rstrip(":") for line in one_epoch["logs"]]
    assert order == PATHS + PATHS[1:] + PATHS[:1]


@pytest.mark.slow
def test_each_path_runs_with_its_own_settings(one_epoch):
    rows = one_epoch["result"]["paths"]
    assert (rows["eager"]["compile"], rows["eager"]["keep_freed_memory"]) == (False, False)
    assert (rows["published"]["compile"], rows["published"]["keep_freed_memory"]) == (False, False)
    assert (rows["default"]["compile"], rows["default"]["keep_freed_memory"]) == (False, True)  # glibc here
    assert rows["compiled"]["compile"] is True
    assert [rows[p]["autocast"] for p in PATHS] == [None, None, None, "bfloat16", None]


@pytest.mark.slow
def test_warmup_is_timed_apart_from_the_steady_state(one_epoch):
    rows = one_epoch["result"]["paths"]
    assert rows["published"]["warmup_seconds"] is None  # its loader's start-up is in every epoch, as published
    for name in PATHS[1:]:
        assert len(rows[name]["warmup_seconds_each"]) == REPEATS and rows[name]["warmup_seconds"] > 0
    # compiling (even from inductor's on-disk cache) costs more than an eager step or two
    assert rows["compiled"]["warmup_seconds"] > rows["eager"]["warmup_seconds"]


@pytest.mark.slow
def test_throughputs_and_speedups_are_of_the_images_timed(one_epoch):
    result = one_epoch["result"]
    base = result["paths"]["published"]
    for name, row in result["paths"].items():
        # 500 images in 4 steps: the images/s are of 500 images, not 4 x 128
        assert_rate(row["train_images_per_s"], IMAGES, row["train_seconds"])
        assert_rate(row["test_images_per_s"], TEST, row["test_seconds"])
        assert_ratio(row["train_speedup"], base["train_seconds"], row["train_seconds"])
        assert_ratio(row["test_speedup"], base["test_seconds"], row["test_seconds"])
    # the timed pass is the whole epoch, so an epoch takes what it took
    assert result["epoch_seconds_default"] == pytest.approx(
        statistics.median(result["paths"]["default"]["train_seconds"]), abs=0.06)


@pytest.mark.slow
def test_memory_and_profile_describe_the_default_training_step(one_epoch):
    result = one_epoch["result"]
    assert all(row["peak_rss_mib"] > 0 for row in result["paths"].values())
    profile = result["profile_default"]
    shares = [op["self_cpu_share"] for op in profile]
    assert len(profile) == 8 and len({op["op"] for op in profile}) == 8  # the top 8 distinct ops
    assert shares == sorted(shares, reverse=True) and shares[-1] > 0
    assert sum(shares) < 1 + 8 * 0.0005  # a part of the whole (each share rounded to 3 decimals)
    # a conv net's training step: convolutions (forward or backward) are among its costliest ops
    assert any("conv" in op["op"] for op in profile), profile


def test_paths_left_out_say_why(small):
    _, cfg = small
    chosen, skipped = benchmark.paths(cfg, "fp16", torch.device("cpu"))
    assert "default_fp16" not in chosen and skipped["default_fp16"].startswith("fp16 needs a CUDA GPU")
    from torch._inductor import config as inductor

    with inductor.patch({"cpp.cxx": (None, "no-such-c++")}):  # what inductor would compile with
        chosen, skipped = benchmark.paths(cfg, "bf16", torch.device("cpu"))
    assert list(chosen) == PATHS[:4] and "no C++ compiler" in skipped["compiled"]
    compiled_default = dataclasses.replace(cfg, compile=True)
    chosen, _ = benchmark.paths(compiled_default, "bf16", torch.device("cpu"))
    assert "compiled" not in chosen and chosen["default"][0].compile  # the default is the compiled path


def test_steps_beyond_one_epoch_are_rejected(small, mnist_root):
    variant, cfg = small
    with pytest.raises(ParamsError) as info:
        run_benchmark(variant, cfg, mnist_root, steps=5, repeats=1)
    assert str(info.value) == ("benchmark.steps: 5 is more than the 4 steps of one epoch of 500 images in batches "
                               "of 128; use 0 (one epoch) or fewer")
