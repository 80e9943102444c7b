"""The comparison table: one JSON file per variant, which `dvc metrics show --md` prints.

DVC flattens nested keys with "." and sorts the columns by name, so the keys are
chosen to read as a side-by-side table (widths measured for the README):

    best_test.ours | best_test.published | best_test.published_path | best_test_epoch.ours |
    best_test_epoch.published | best_train.ours | best_train.published | final_test.ours |
    final_test.published | params.ours | params.published | seeds.best_test_mean |
    seeds.best_test_sd | seeds.final_reach_99_4 | seeds.final_test_mean | seeds.final_test_min |
    seeds.n | verdict.band | verdict.published

"ours" is our train.seed run, the counterpart of the published single run; the
seed mean and SD beside it are what the verdict uses (stats.py states the rule).
The final-epoch columns say whether a recipe holds the headline without choosing
the epoch on the test set: the seeds' mean and lowest final test accuracy, and
how many seeds end at GOAL or more. verdict.published is where the published best test falls, "within", "above" or
"below" our band of ± verdict.band points. "published" comes from
reference/published.json: params, best train and best test from the write-up's
table, best-test epoch and final test from its notebook's log. A value that does
not exist is null (DVC shows "-"): no published entry for the variant, or its
published code not rerun here. No wall time or speed: they are in the run files.
A variant not run yet (inputs.not_run_note) keeps its row, published values filled:
every "ours" value and the seed summary are null (seeds.n 0), verdict.published is
"not run".

Rows are sorted by path too, so each file is named <step>_<variant>.json with the
variant's position in params.yaml: the rows then read in the drill-down's order.
"""

from __future__ import annotations

from pathlib import Path

from .config import Params
from .errors import InputFileError
from .run_files import read_input
from .reference import PublishedRun
from .stats import band, describe

NOT_RUN = "not run"  # verdict.published of a variant not run yet
GOAL = 99.4          # test accuracy (%), the headline "99.4% in 15 epochs"; seeds.final_reach_99_4 counts it


def table_file(table_dir: str | Path, params: Params, name: str) -> Path:
    names = list(params.variants)
    width = len(str(len(names)))
    return Path(table_dir) / f"{names.index(name) + 1:0{width}d}_{name}.json"


def _get(obj, attr: str):
    return None if obj is None else getattr(obj, attr)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def table_row(runs: list[dict], published: PublishedRun | None, code: dict | None) -> dict:
    """One variant's row. runs: its configured runs, train.seed first (empty: not run yet);
    published: its reference entry or None; code: the published-path rerun's summary or None."""
    # A variant not run keeps every key, "ours" null: DVC lists the rows as one table.
    ours = runs[0] if runs else {}
    empty = {"mean": None, "sd": None, "min": None}
    best = describe([r["best_test_acc"] for r in runs]) if runs else empty
    final = describe([r["final_test_acc"] for r in runs]) if runs else empty
    # The published numbers are test-set accuracies: a run evaluated on a training
    # holdout (train.holdout) has no verdict against them.
    comparable = bool(runs) and published is not None and ours.get("evaluated_on", "test") == "test"
    noise = band([r["best_test_acc"] for r in runs], published.best_test, ours["test_images"]) if comparable else None
    verdict = NOT_RUN if not runs else None if noise is None else noise.verdict(published.best_test)
    return {
        "best_test": {"ours": ours.get("best_test_acc"), "published": _get(published, "best_test"),
                      "published_path": None if code is None else code["best_test_acc"]},
        "best_test_epoch": {"ours": ours.get("best_test_epoch"),
                            "published": None if published is None else published.log_best_test["epoch"]},
        "best_train": {"ours": ours.get("best_train_acc"), "published": _get(published, "best_train")},
        "final_test": {"ours": ours.get("final_test_acc"), "published": _get(published, "log_final_test")},
        "params": {"ours": ours.get("params"), "published": _get(published, "params")},
        # one seed has no spread to estimate: no SD in the table (the band's formula takes it as 0)
        "seeds": {"n": len(runs), "best_test_mean": _round(best["mean"], 2),
                  "best_test_sd": _round(best["sd"], 3) if len(runs) > 1 else None,
                  "final_test_mean": _round(final["mean"], 2), "final_test_min": final["min"],
                  "final_reach_99_4": sum(r["final_test_acc"] >= GOAL for r in runs) if runs else None},
        "verdict": {"band": None if noise is None else round(noise.half_width, 2), "published": verdict},
    }


def read_table(params: Params, table_dir: str | Path, runs: dict) -> dict:
    """variant -> its row, in params.yaml order; runs (inputs.read_runs) must be the ones it was made from."""
    rows = {}
    for name in params.variants:
        path = table_file(table_dir, params, name)
        row = read_input(path, "run `dvc repro compare`")
        n = row.get("seeds", {}).get("n") if isinstance(row, dict) else None
        if n != len(runs[name]):
            # A row from before a run was added (or removed) would put its "not run" beside the run's figures.
            raise InputFileError(f"{path}: counts {n} runs of {name}, the run files {len(runs[name])}: stale; "
                                 "run `dvc repro compare`")
        rows[name] = row
    return rows
