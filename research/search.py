"""A design search's record: its DVC experiments and what each scored on the validation split.

A search is a set of `dvc exp run train@<variant> -S train.holdout=N -S ...`
experiments (research/under_5k.sh queues one): each trains on all but the last N
training images and scores on those N, never on the test set. Experiments live
in this clone's git refs only, so the record is written to a committed file
that the report renders (mnist_repro.compare.run_files.read_searches reads it):

    python research/search.py under_5k --max-params 5000 --out metrics/search/under_5k.json

Exploration, not the pipeline: this script lives outside the library and no stage
runs it. An experiment's recipe is its variant's entry in its params.yaml over that
file's `defaults:` section, as training merges them (a layout older than `defaults:`
held the whole recipe in the entry), typed by this checkout's VariantConfig; the rest
of the file is not read, so a section added or changed since (seeds, confirmation)
does not hide an experiment. One whose recipe lacks a key this checkout needs (made
before the key existed) or holds one it does not know is skipped and counted, not
guessed at.

Every experiment of the variant evaluated on a holdout is listed with the exact
`-S` overrides that made it (its params.yaml against its baseline commit's).
Candidates (same overrides but the seed) are ranked by the mean of their seeds'
*final*-epoch validation accuracy: the final epoch is what a user of the recipe
gets, and the best epoch would be chosen on the data it is scored on. Scores on
different splits do not compare (a different holdout is other images), so the
candidates are ranked within their split, the largest split first: a search that
outgrows its split's resolution goes on with a larger one, and that one decides.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics

import yaml
from dvc.utils.flatten import flatten

from mnist_repro.core import cli
from mnist_repro.core.config import VariantConfig, Yaml12Loader
from mnist_repro.core.errors import ParamsError, SearchError
from mnist_repro.core.files import write_json
from mnist_repro.core.typed_yaml import build

SEED_KEY = "train.seed"
# A variant's settings: every params.yaml key of it but its description.
RECIPE_KEYS = tuple(f.name for f in dataclasses.fields(VariantConfig) if f.name not in ("name", "target"))


def overrides(params: dict, baseline: dict, variant: str) -> dict:
    """Flat key -> value of every param of train@<variant> (launch, train, the variants'
    defaults, variants.<variant>) that differs from the baseline's: what `-S` set for the stage."""
    new, old = flatten(params), flatten(baseline)
    own = ("launch.", "train.", "defaults.", f"variants.{variant}.")
    return {k: v for k, v in new.items() if k.startswith(own) and old.get(k, object()) != v}


def command(variant: str, changed: dict, baseline: dict) -> str:
    """The `dvc exp run` that makes these overrides on the baseline commit (`++` adds a key it lacks)."""
    old = flatten(baseline)
    return f"dvc exp run train@{variant} " + " ".join(
        f"-S {'' if k in old else '++'}{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in changed.items())


def recipe_of(params: dict, variant: str) -> VariantConfig:
    """The variant as training read it: its entry over the file's `defaults:` (none before that section
    existed); ParamsError naming the key when a key is missing or unknown to this checkout."""
    defaults, entry = params.get("defaults") or {}, params["variants"][variant]
    if not isinstance(defaults, dict) or not isinstance(entry, dict):
        raise ParamsError(f"variants.{variant}: expected a mapping (and defaults one, if present)")
    return build(VariantConfig, {**defaults, **entry, "name": variant}, f"variants.{variant}")


def record(name: str, rev: str, baseline_rev: str, variant: str, params: dict, baseline: dict, run: dict) -> dict:
    """One experiment's line of the record (params: its params.yaml, baseline: its baseline commit's;
    run: its run summary). The command reruns it on checking out the baseline commit."""
    changed = overrides(params, baseline, variant)
    recipe = recipe_of(params, variant)
    return {
        "experiment": name, "rev": rev[:7], "baseline": baseline_rev[:7],
        "command": command(variant, changed, baseline),
        "overrides": changed,
        "seed": run["seed"], "model": recipe.model, "params": run["params"],
        "recipe": {k: getattr(recipe, k) for k in RECIPE_KEYS},
        "validation_images": run["test_images"], "train_images": run["train_images"],
        "final_val_acc": run["final_test_acc"], "best_val_acc": run["best_test_acc"],
        "best_val_epoch": run["best_test_epoch"], "final_train_acc": run["final_train_acc"],
        "wall_seconds": run["wall_seconds"],
    }


def rank(records: list[dict], max_params: int | None = None) -> list[dict]:
    """Candidates (records equal but for the seed), the largest validation split first and within it
    the best mean final validation accuracy; those over max_params (a reference point, such as the
    published model) after the rest."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        key = json.dumps({k: v for k, v in r["overrides"].items() if k != SEED_KEY}, sort_keys=True)
        groups.setdefault(key, []).append(r)
    ranked = [{"overrides": json.loads(k), "recipe": rs[0]["recipe"], "model": rs[0]["model"],
               "params": rs[0]["params"], "validation_images": rs[0]["validation_images"],
               "seeds": sorted(r["seed"] for r in rs),
               "final_val_mean": round(statistics.fmean(r["final_val_acc"] for r in rs), 3),
               "final_val_min": min(r["final_val_acc"] for r in rs),
               "experiments": [r["experiment"] for r in rs],
               "within_budget": max_params is None or rs[0]["params"] <= max_params}
              for k, rs in groups.items()]
    return sorted(ranked, key=lambda c: (not c["within_budget"], -c["validation_images"], -c["final_val_mean"],
                                         c["params"]))


def collect(variant: str, repo: str = ".", num: int = 100, max_params: int | None = None,
            design: str | None = None, prefix: str = "") -> dict:
    """Every successful holdout experiment of train@<variant> among the last `num` commits' experiments
    (only those whose name starts with `prefix`), recorded as the search for `design` (default: the
    variant; another when a design is searched with an existing variant's stage)."""
    import dvc.api
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    def read_yaml(rev):  # YAML 1.2 like DVC, which writes `no` unquoted after -S
        return yaml.load(dvc.api.read("params.yaml", repo=repo, rev=rev), Loader=Yaml12Loader)

    records, unreadable, baseline, baseline_params = [], [], None, None
    try:
        dvc_repo = Repo(repo)
    except NotDvcRepoError:
        raise SearchError(f"{repo} is not a DVC project; run this from the project's root or pass --repo") from None
    with dvc_repo:
        rows = dvc.api.exp_show(repo=repo, num=num)
        for row in rows:
            if row["typ"] == "baseline":
                baseline = None if row["rev"] == "workspace" else dvc_repo.scm.resolve_rev(row["rev"])
                baseline_params = None  # read once, when its first experiment needs it
                continue
            # A finished experiment is "Success" if it ran from the queue, None if it ran directly.
            if row.get("State") not in (None, "Success") or baseline is None:
                continue
            rev = dvc_repo.scm.resolve_rev(row["rev"])
            params = read_yaml(rev)
            if not params.get("train", {}).get("holdout") or variant not in params.get("variants", {}):
                continue
            path = f"metrics/runs/{variant}/seed_{params['train']['seed']}.json"
            try:
                run = json.loads(dvc.api.read(path, repo=repo, rev=rev))
            except FileNotFoundError:
                continue
            if not run.get("evaluated_on", "").startswith("holdout"):
                continue
            baseline_params = baseline_params or read_yaml(baseline)
            name = row["Experiment"] or rev[:7]
            if not name.startswith(prefix):
                continue
            try:
                records.append(record(name, rev, baseline, variant, params, baseline_params, run))
            except ParamsError as e:
                unreadable.append(f"{name}: {e}")
    if unreadable:
        print(f"skipped {len(unreadable)} experiment(s) whose recipe this checkout cannot read, "
              f"such as {unreadable[0]}")
    if not records:
        raise SearchError(f"no successful holdout experiment of train@{variant} in this clone; "
                          f"queue them (research/{variant}.sh) and run `dvc queue start`")
    records.sort(key=lambda r: r["experiment"])
    return {"variant": design or variant, "stage": f"train@{variant}", "max_params": max_params,
            "rule": "candidates ranked within their validation split, the largest split first, by the mean of "
                    "their seeds' final-epoch validation accuracy"
                    + (f"; those over {max_params:,} parameters are reference points, listed last" if max_params else ""),
            "candidates": rank(records, max_params), "experiments": records}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variant")
    ap.add_argument("--repo", default=".")
    ap.add_argument("--max-params", type=int, help="the design's parameter budget; larger candidates are references")
    ap.add_argument("--out", required=True, help="the record's JSON file (metrics/search/<variant>.json)")
    ap.add_argument("--design", help="the design the search is for, when its experiments use another "
                                     "variant's stage (default: the variant)")
    ap.add_argument("--prefix", default="", help="only experiments whose name starts with this")
    args = ap.parse_args(argv)
    result = collect(args.variant, args.repo, max_params=args.max_params, design=args.design, prefix=args.prefix)
    write_json(args.out, result)
    for c in result["candidates"]:
        print(f"{c['final_val_mean']:.2f} on {c['validation_images']:,} (min {c['final_val_min']:.2f}, "
              f"seeds {c['seeds']}) "
              f"{c['model']} {c['params']} params: {c['overrides']}")


if __name__ == "__main__":
    cli.run(main)
