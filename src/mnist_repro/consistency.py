"""Is 99.4% a property of the recipe or of one seed? Summarise one variant over several seeds."""

from __future__ import annotations

import math
from pathlib import Path

from .config import ParamsError
from .io import read_json

TARGET_ACC = 99.40  # percent; the drill-down's goal (../shared/seed/published-readme.md)


class InputFileError(ParamsError):
    """An input file is missing, stale or not in the expected form.

    A ParamsError so that ``cli.run`` reports it on one line: like a bad param,
    it is fixed by the user (rerun the stage that writes the file, or edit it).
    """


def seed_metrics_path(runs_dir: str | Path, seed: int) -> Path:
    return Path(runs_dir) / f"seed_{seed}.json"


def read_input(path: str | Path, how_to_make: str):
    """A stage's JSON input, or one line saying it is missing and which stage writes it."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: missing; {how_to_make}")
    return read_json(path)


def read_run_metrics(path: str | Path, *, variant: str, seed: int, how_to_make: str) -> dict:
    metrics = read_input(path, how_to_make)
    if metrics.get("variant") != variant or metrics.get("seed") != seed:
        raise InputFileError(
            f"{path}: holds variant {metrics.get('variant')!r} seed {metrics.get('seed')!r}, expected "
            f"variant {variant!r} seed {seed}; it is stale, {how_to_make}")
    return metrics


def describe(values: list[float]) -> dict:
    """Mean, sample standard deviation (ddof=1; None for a single run), min, max, n."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": round(mean, 2), "std": None if std is None else round(std, 3),
            "min": round(min(values), 2), "max": round(max(values), 2), "n": n}


def summarize_seeds(runs: list[dict], variant: str, target: float = TARGET_ACC) -> dict:
    """runs: per-seed metrics dicts as train.summarize writes them, main run first."""
    if not runs:
        raise InputFileError(f"consistency of {variant}: no runs to summarise")
    shapes = {(r["epochs"], r["train_images"], r["test_images"]) for r in runs}
    if len(shapes) > 1:
        # Quick runs (train_limit/test_limit) mixed with full ones would make the spread meaningless.
        raise InputFileError(
            f"consistency of {variant}: the runs differ in (epochs, train images, test images): "
            f"{sorted(shapes)}; rerun them all with the same params")
    best = [r["best_test_acc"] for r in runs]
    final = [r["final_test_acc"] for r in runs]
    return {
        "variant": variant,
        "target_acc": target,
        "seeds": [{"seed": r["seed"], "best_test_acc": r["best_test_acc"],
                   "final_test_acc": r["final_test_acc"]} for r in runs],
        "best_test_acc": describe(best),
        "final_test_acc": describe(final),
        "reached_target_best": sum(v >= target for v in best),
        "reached_target_final": sum(v >= target for v in final),
        "n": len(runs),
        "epochs": runs[0]["epochs"],
        "test_images": runs[0]["test_images"],
    }


def collect_runs(main_metrics: str | Path, runs_dir: str | Path, variant: str, main_seed: int,
                 extra_seeds) -> list[dict]:
    """The main run (train.seed) plus exactly the configured extra seeds; other files are ignored."""
    runs = [read_run_metrics(main_metrics, variant=variant, seed=main_seed,
                             how_to_make=f"run `dvc repro train@{variant}`")]
    for seed in extra_seeds:
        runs.append(read_run_metrics(seed_metrics_path(runs_dir, seed), variant=variant, seed=seed,
                                     how_to_make=f"run `dvc repro consistency_run@{seed}`"))
    return runs
