"""Reading what the training stages wrote, with one-line errors that name the stage to rerun.

Only the runs params.yaml configures are read: each variant's seeds (Params.seeds_of:
train.seed's run is stage train@<variant>, the others seed@<variant>-<seed>; a registered
variant's are registration.seeds, stages registered@<variant>-<seed>), the
published-path reruns (published_path.variants x published_path.seeds, stage
published_path@<variant>-<seed>) and the confirmation runs (confirmation.seeds, stage
confirm@<seed>). A leftover file of a seed no longer configured is ignored; a
configured one that is missing or stale stops the stage before anything is written,
with exceptions for what is "not run yet": a variant whose main run file is missing
(its first seed's: one variant can take hours, and the others are worth comparing
meanwhile; its other seeds wait for it), a published-path variant or the confirmation with none of its
files. Partly run, they are an error: a result from the seeds that happen to be done
would be a result chosen by the clock. The confirmatory data-path test (data_path_test.variants
x data_path_test.seeds on both data paths, stages data_path_ours@ and data_path_published@) is
read as far as it has run: the report counts its runs and gives no verdict until all are in.

Where each file lives is written in dvc.yaml only (the training stages' outs, the report
stage's deps): the compare and report stages pass the directories, and the readers below
look inside them where their writers put each file (seed_file).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.config import Params
from ..core.errors import InputFileError

# What the comparison and the report read from a run file; train.summarize writes them all.
RUN_KEYS = ("variant", "seed", "params", "best_train_acc", "best_test_acc", "best_test_epoch", "final_test_acc",
            "epochs", "train_images", "test_images", "wall_seconds", "device", "device_name", "num_processes",
            "num_machines", "mixed_precision", "torch")
# What is read from a published-path rerun (table.same_seeds and the report's curves and figures): which
# run it is and its two accuracies; "epochs" checks its history. Its stage writes every RUN_KEYS as well
# (summary.summarize), but nothing reads the rest from it, so a rerun recorded before those keys existed
# (tests/data/runs-37309a9) is still compared rather than refused.
PATH_KEYS = ("variant", "seed", "data_path", "epochs", "best_test_acc", "final_test_acc")


def read_input(path: str | Path, how_to_make: str):
    """A stage's JSON input, or one line saying what is wrong and which stage writes it."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: missing; {how_to_make}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputFileError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); {how_to_make}") from None


def seed_file(root: str | Path, name: str, seed: int) -> Path:
    return Path(root) / name / f"seed_{seed}.json"


def checked(data, path: Path, keys: tuple, expect: dict, how_to_make: str) -> dict:
    if not isinstance(data, dict):
        raise InputFileError(f"{path}: expected a JSON object; {how_to_make}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise InputFileError(f"{path}: lacks {', '.join(missing)} (written by an older version?); {how_to_make}")
    wrong = {k: data[k] for k, v in expect.items() if data[k] != v}
    if wrong:
        raise InputFileError(f"{path}: holds {wrong}, expected {({k: expect[k] for k in wrong})}: it is stale; "
                             f"{how_to_make}")
    return data


def read_history(path: Path, epochs: int, summary: str, how_to_make: str) -> list:
    """A per-epoch history that must match its summary's epoch count (else it is stale)."""
    history = read_input(path, how_to_make)
    if not isinstance(history, list) or len(history) != epochs:
        raise InputFileError(f"{path}: not the {epochs}-epoch history of {summary}: stale; {how_to_make}")
    return history


def not_run_note(params: Params, runs_dir: str | Path, name: str) -> str:
    """Why a variant has no runs and the stage that makes its main run (a registered variant: its
    stages, all run together), on one line."""
    first, *others = params.seeds_of(name)
    path = seed_file(runs_dir, name, first)
    extras = [s for s in others if seed_file(runs_dir, name, s).is_file()]
    # Extra seeds alone would be compared as if one of them were the main run: say why they are unused.
    ignored = f"; extra seeds {', '.join(map(str, extras))} present, ignored until it exists" if extras else ""
    stages = params.stage_of(name, first)
    if params.registered(name):  # its seeds run together: the group's stages, one per seed
        stages = (f"registered (its {len(others) + 1} stages {stages} ... {params.stage_of(name, others[-1])}, "
                  "run together)")
    return f"not run yet ({path} missing{ignored}): dvc repro {stages}"


def read_runs(params: Params, runs_dir: str | Path) -> dict:
    """variant -> its configured runs' summaries, its first seed's (train.seed's but for a registered
    variant) first, in params.yaml order; an empty list for a variant not run yet (that first run
    file missing, see not_run_note)."""
    runs = {}
    for name in params.variants:
        runs[name] = []
        if not seed_file(runs_dir, name, params.seeds_of(name)[0]).is_file():
            continue
        for seed in params.seeds_of(name):
            path = seed_file(runs_dir, name, seed)
            how = f"run `dvc repro {params.stage_of(name, seed)}`"
            runs[name].append(checked(read_input(path, how), path, RUN_KEYS, {"variant": name, "seed": seed}, how))
        shapes = {(r["epochs"], r["train_images"], r["test_images"], r.get("evaluated_on", "test")) for r in runs[name]}
        if len(shapes) > 1:
            # Quick runs (train_limit/test_limit/holdout) mixed with full ones make a spread meaningless.
            raise InputFileError(f"{Path(runs_dir) / name}: its seeds differ in (epochs, train images, test images, "
                                 f"evaluated on): {sorted(shapes)}; rerun them with the same params (`dvc repro`)")
    return runs


def read_histories(params: Params, history_dir: str | Path, runs: dict) -> dict:
    """variant -> per-seed histories (lists of per-epoch dicts), in the order of `runs`."""
    histories = {}
    for name, variant_runs in runs.items():
        histories[name] = []
        for run in variant_runs:
            path = seed_file(history_dir, name, run["seed"])
            how = f"run `dvc repro {params.stage_of(name, run['seed'])}`"
            histories[name].append(read_history(path, run["epochs"], "its run file", how))
    return histories


def _runs_and_histories(paths: list[tuple], what: str, keys: tuple, partial: bool = False) -> list[dict]:
    """[(seed, run path, history path, expected values, stage)] -> [{"metrics", "history"}] for a set of
    seeds that is run together, each run file holding `keys`: [] when none of its run files exists,
    an error when some do; with partial, the seeds whose run files exist (the caller counts them)."""
    present = [p for p in paths if p[1].is_file()]
    if not present:
        return []
    missing = [p for p in paths if not p[1].is_file()]
    if partial:
        paths = present
    elif missing:
        seed, path, _, _, stage = missing[0]
        raise InputFileError(f"{path}: missing, while {len(present)} of {len(paths)} seeds of {what} exist (a "
                             f"result from some seeds would be chosen by the clock); run `dvc repro {stage}`")
    out = []
    for seed, path, history_path, expect, stage in paths:
        how_to = f"run `dvc repro {stage}`"
        metrics = checked(read_input(path, how_to), path, keys, expect, how_to)
        out.append({"metrics": metrics, "history": read_history(history_path, metrics["epochs"], str(path), how_to)})
    return out


def read_published_path(params: Params, published_path_dir: str | Path) -> dict:
    """variant -> [{"metrics", "history"}] per published_path.seeds, for the variants
    published_path.variants lists; a variant with none of its files is absent (not run yet)."""
    published_path, root = {}, Path(published_path_dir)
    for name in params.published_path.variants:
        paths = [(s, seed_file(root / "runs", name, s), seed_file(root / "history", name, s),
                  {"variant": name, "seed": s, "data_path": "published"}, f"published_path@{name}-{s}")
                 for s in params.published_path.seeds]
        runs = _runs_and_histories(paths, f"published_path@{name}", PATH_KEYS)
        if runs:
            published_path[name] = runs
    return published_path


def published_path_note(params: Params, name: str) -> str:
    seeds = params.published_path.seeds
    if not seeds:
        return "no runs configured (`published_path.seeds` is empty)"
    return (f"not run yet: `dvc repro published_path@{name}-{seeds[0]}` ... `published_path@{name}-{seeds[-1]}`"
            if len(seeds) > 1 else f"not run yet: `dvc repro published_path@{name}-{seeds[0]}`")


DATA_PATH_STAGES = {"ours": "data_path_ours", "published": "data_path_published"}  # side -> its stage group


def read_data_path_test(params: Params, test_dir: str | Path) -> dict:
    """side ("ours", "published") -> variant -> [{"metrics", "history"}] of the confirmatory data-path
    test (data_path_test.variants x data_path_test.seeds, <side>/runs/ and <side>/history/ under
    test_dir), in seed order: the seeds whose run files exist. Unlike the sets above, part of it is no
    error: the report counts the runs in and gives no verdict until every seed of both paths is. A
    variant's runs on both paths must share their shape (epochs, images, evaluated on)."""
    cfg, root = params.data_path_test, Path(test_dir)
    out = {side: {} for side in DATA_PATH_STAGES}
    for name in cfg.variants:
        for side, stage in DATA_PATH_STAGES.items():
            paths = [(s, seed_file(root / side / "runs", name, s), seed_file(root / side / "history", name, s),
                      {"variant": name, "seed": s, "data_path": side}, f"{stage}@{name}-{s}") for s in cfg.seeds]
            out[side][name] = _runs_and_histories(paths, f"{stage}@{name}", (*RUN_KEYS, "data_path"), partial=True)
        shapes = {(m["epochs"], m["train_images"], m["test_images"], m.get("evaluated_on", "test"))
                  for side in out for m in (r["metrics"] for r in out[side][name])}
        if len(shapes) > 1:
            raise InputFileError(f"{root}: the data-path test's runs of {name} differ in (epochs, train images, "
                                 f"test images, evaluated on): {sorted(shapes)}; rerun them with the same params "
                                 "(`dvc repro`)")
    return out


def read_confirmation(params: Params, confirmation_dir: str | Path) -> list[dict]:
    """[{"metrics", "history"}] of the confirmation runs, confirmation.seeds in order; [] when
    none exists (not run yet)."""
    cfg = params.confirmation
    root = Path(confirmation_dir)
    paths = [(s, root / "runs" / f"seed_{s}.json", root / "history" / f"seed_{s}.json",
              {"variant": cfg.variant, "seed": s}, f"confirm@{s}") for s in cfg.seeds]
    return _runs_and_histories(paths, "the confirmation", RUN_KEYS)


def confirmation_note(params: Params) -> str:
    seeds = params.confirmation.seeds
    if not seeds:
        return "no runs configured (`confirmation.seeds` is empty)"
    return (f"not run yet: `dvc repro confirm` (stages confirm@{seeds[0]} ... confirm@{seeds[-1]}, "
            f"{len(seeds)} runs of {params.confirmation.variant})")


def read_errors(params: Params, errors_dir: str | Path, name: str, runs: dict) -> dict | None:
    """The main run's misclassified test images of one variant (not a registered one: its stages
    write none); None when it is not run yet (an errors file left from an earlier run would describe
    a run that is not there)."""
    if not runs[name]:
        return None
    path = Path(errors_dir) / f"{name}.json"
    how = f"run `dvc repro train@{name}`"
    errors = checked(read_input(path, how), path, ("variant", "seed", "test_images", "misclassified"),
                      {"variant": name, "seed": params.train.seed}, how)
    for entry in errors["misclassified"]:
        if not isinstance(entry, dict) or not {"index", "label", "predicted"} <= set(entry):
            raise InputFileError(f"{path}: misclassified entries need index, label and predicted, got {entry!r}; {how}")
    return errors


SEARCH_KEYS = ("variant", "rule", "candidates", "experiments")


def read_searches(params: Params, search_dir: str | Path) -> dict:
    """design -> its search's record (python research/search.py), for every <search>/<design>.json;
    a design params.yaml has no variant for is read too (its search done, the design not registered
    yet: report.search says so)."""
    searches = {}
    for path in sorted(Path(search_dir).glob("*.json")):
        if path.name == TEST_SET_USES:
            continue
        how = f"rerun `python research/search.py {path.stem} --out {path}`"
        searches[path.stem] = checked(read_input(path, how), path, SEARCH_KEYS, {"variant": path.stem}, how)
    return searches


TEST_SET_USES = "test_set_uses.json"   # in the search directory: written by research/test_set_uses.py
USE_KEYS = ("use", "commit", "variant", "model", "params", "runs")


def read_test_set_uses(search_dir: str | Path) -> list[dict]:
    """The earlier uses of the test set, each {"use", "commit", "variant", "model", "params", "runs":
    [{"seed", "best_test_acc", "final_test_acc"}]}, read from git history by research/test_set_uses.py."""
    path = Path(search_dir) / TEST_SET_USES
    how = f"run `python research/test_set_uses.py --out {path}` and commit it"
    record = checked(read_input(path, how), path, ("uses",), {}, how)
    if not isinstance(record["uses"], list):
        raise InputFileError(f"{path}: uses: expected a list; {how}")
    for i, use in enumerate(record["uses"]):
        checked(use, path, USE_KEYS, {}, how)
        for run in use["runs"] if isinstance(use["runs"], list) else [None]:
            if not isinstance(run, dict) or not {"seed", "best_test_acc", "final_test_acc"} <= set(run):
                raise InputFileError(f"{path}: uses[{i}].runs: entries need seed, best_test_acc and "
                                     f"final_test_acc, got {run!r}; {how}")
    return record["uses"]


POWER_KEYS = ("metric", "margin", "variants")


def read_data_path_power(path: str | Path) -> dict:
    """The data-path test's planned power (research/data_path_power.py's record): {"metric", "margin",
    "variants": {variant: {"ours": {"seeds", "sd"}, "published_path": {"seeds", "sd"},
    "power_equivalent_if_no_difference": {"<n>": chance}}}}."""
    path = Path(path)
    how = f"run `python research/data_path_power.py --margin <data_path_test.margin> --out {path}` and commit it"
    record = checked(read_input(path, how), path, POWER_KEYS, {}, how)
    if not isinstance(record["variants"], dict):
        raise InputFileError(f"{path}: variants: expected a mapping of variant to its power; {how}")
    for name, entry in record["variants"].items():
        checked(entry, path, ("ours", "published_path", "power_equivalent_if_no_difference"), {}, how)
        sides = [entry[side] for side in ("ours", "published_path")]
        if (not all(isinstance(s, dict) and {"seeds", "sd"} <= set(s) for s in sides)
                or not isinstance(entry["power_equivalent_if_no_difference"], dict)):
            raise InputFileError(f"{path}: variants.{name}: needs ours and published_path with seeds and sd, and "
                                 f"power_equivalent_if_no_difference as a mapping of n to chance; {how}")
    return record
