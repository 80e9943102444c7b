"""Reading what the training stages wrote, with one-line errors that name the stage to rerun.

Only the runs params.yaml configures are read: every variant's main run (seed
train.seed, stage train@<variant>), the extra seeds of the variants listed under
seeds.variants (stage seed@<variant>-<seed>) and the published-path reruns listed
under published_path.variants (stage published_path@<variant>). A leftover file of
a seed no longer configured is ignored; a configured one that is missing or stale
stops the stage before anything is written, with one exception: a variant whose
main run file is missing is "not run yet" (no runs: one variant can take hours, and
the others are worth comparing meanwhile); its extra seeds, if any, wait for it.

Layout (directories passed by dvc.yaml):
    <runs>/<variant>/seed_<s>.json          one run's summary
    <history>/<variant>/seed_<s>.json       its per-epoch history
    <published_path>/<variant>.json         the published data path rerun here, seed train.seed
    <published_path>/history/<variant>.json its per-epoch history
    <errors>/<variant>.json                 the main run's misclassified test images
    <search>/<variant>.json                 a design search's record (mnist_repro.search), if any
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import Params
from .errors import InputFileError

# What the comparison and the report read from a run file; train.summarize writes them all.
RUN_KEYS = ("variant", "seed", "params", "best_train_acc", "best_test_acc", "best_test_epoch", "final_test_acc",
            "epochs", "train_images", "test_images", "wall_seconds", "device", "device_name", "num_processes",
            "num_machines", "mixed_precision", "torch")
CODE_KEYS = ("variant", "params", "best_train_acc", "best_test_acc", "best_test_epoch", "final_test_acc", "epochs")


def read_input(path: str | Path, how_to_make: str):
    """A stage's JSON input, or one line saying what is wrong and which stage writes it."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: missing; {how_to_make}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputFileError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); {how_to_make}") from None


def configured_seeds(params: Params, name: str) -> tuple:
    """train.seed first (the run compared one-to-one with the published single run), then the extras."""
    extra = params.seeds.extra if name in params.seeds.variants else ()
    return (params.train.seed, *(s for s in extra if s != params.train.seed))


def seed_stage(params: Params, name: str, seed: int) -> str:
    return f"train@{name}" if seed == params.train.seed else f"seed@{name}-{seed}"


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
    """Why a variant has no runs and the stage that makes its main run, on one line."""
    path = seed_file(runs_dir, name, params.train.seed)
    extras = [s for s in configured_seeds(params, name)[1:] if seed_file(runs_dir, name, s).is_file()]
    # Extra seeds alone would be compared as if one of them were the main run: say why they are unused.
    ignored = f"; extra seeds {', '.join(map(str, extras))} present, ignored until it exists" if extras else ""
    return f"not run yet ({path} missing{ignored}): dvc repro {seed_stage(params, name, params.train.seed)}"


def read_runs(params: Params, runs_dir: str | Path) -> dict:
    """variant -> its configured runs' summaries, train.seed first, in params.yaml order;
    an empty list for a variant not run yet (its main run file missing, see not_run_note)."""
    runs = {}
    for name in params.variants:
        runs[name] = []
        if not seed_file(runs_dir, name, params.train.seed).is_file():
            continue
        for seed in configured_seeds(params, name):
            path = seed_file(runs_dir, name, seed)
            how = f"run `dvc repro {seed_stage(params, name, seed)}`"
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
            how = f"run `dvc repro {seed_stage(params, name, run['seed'])}`"
            histories[name].append(read_history(path, run["epochs"], "its run file", how))
    return histories


def read_published_path(params: Params, code_dir: str | Path) -> dict:
    """variant -> {"metrics": ..., "history": ...} of the published-path rerun, for the
    variants published_path.variants lists; the others are absent (not run)."""
    code = {}
    for name in params.published_path.variants:
        how = f"run `dvc repro published_path@{name}`"
        path = Path(code_dir) / f"{name}.json"
        metrics = checked(read_input(path, how), path, CODE_KEYS, {"variant": name}, how)
        history = read_history(Path(code_dir) / "history" / f"{name}.json", metrics["epochs"], str(path), how)
        code[name] = {"metrics": metrics, "history": history}
    return code


def read_errors(params: Params, errors_dir: str | Path, name: str, runs: dict) -> dict | None:
    """The main run's misclassified test images of one variant; None when it is not run yet
    (an errors file left from an earlier run would describe a run that is not there)."""
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
    """variant -> its design search's record (python -m mnist_repro.search), for every
    <search>/<variant>.json; a record of a variant params.yaml lacks is an error."""
    searches = {}
    for path in sorted(Path(search_dir).glob("*.json")):
        how = f"rerun `python -m mnist_repro.search {path.stem} --out {path}`"
        record = checked(read_input(path, how), path, SEARCH_KEYS, {"variant": path.stem}, how)
        if path.stem not in params.variants:
            raise InputFileError(f"{path}: a search for {path.stem!r}, which params.yaml's variants lack; "
                                 "delete it or add the variant")
        searches[path.stem] = record
    return searches
