"""The benchmark stage's measurement on a slice: both paths run, an epoch may end on a short batch."""

from __future__ import annotations

import dataclasses
import statistics

import pytest

from mnist_repro.benchmark import run_benchmark
from mnist_repro.config import ParamsError, load_params
from mnist_repro.train import make_accelerator


@pytest.fixture(scope="module")
def small(repo_root):
    params = load_params(repo_root / "params.yaml")
    cfg = dataclasses.replace(params.train, train_limit=500, test_limit=200)  # 4 steps, the last of 116
    return params.variant("lr_scheduler"), cfg


def test_a_whole_epoch_with_its_short_last_batch(small, mnist_root):
    variant, cfg = small
    result = run_benchmark(variant, cfg, mnist_root, steps=4, repeats=2, accelerator=make_accelerator(),
                           log=lambda msg: None)
    assert result["variant"] == "lr_scheduler" and result["steps"] == 4
    for part in ("train", "test"):
        r = result[part]
        assert len(r["ours_seconds"]) == len(r["baseline_seconds"]) == 2
        assert r["ours_images_per_s"] > 0 and r["baseline_images_per_s"] > 0
        median_ratio = r["ours_images_per_s"] / r["baseline_images_per_s"]
        assert r["speedup"] == pytest.approx(median_ratio, rel=0.02)
    # 500 images in 4 steps: the images/s are of 500 images, not 4 x 128
    assert result["train"]["ours_images_per_s"] == pytest.approx(
        500 / statistics.median(result["train"]["ours_seconds"]), rel=0.05)
    assert 0 < result["peak_rss_mib_ours"] <= result["peak_rss_mib_process"]
    assert result["profile_ours"] and sum(op["self_cpu_share"] for op in result["profile_ours"]) <= 1.0


@pytest.mark.parametrize("steps", [0, 5])
def test_steps_outside_one_epoch_are_rejected(small, mnist_root, steps):
    variant, cfg = small
    with pytest.raises(ParamsError, match=r"^benchmark\.steps: .*between 1 and the 4 steps"):
        run_benchmark(variant, cfg, mnist_root, steps=steps, repeats=1, accelerator=make_accelerator())
