"""The comparison table: one JSON file per variant, which `dvc metrics show --md` prints.

DVC flattens nested keys with "." and lists one column per key; the keys are short so
that the table fits a 200-column terminal (tests/test_compare.py measures it):

    best.also  best.mean  best.pi  best.pub  best.v  best.wu  fin.mean  fin.pi  fin.pub  fin.v  n  params  pp.best

best.* is the best-epoch test accuracy (the published metric), fin.* the last epoch's
(no epoch chosen on the test set). mean: our mean over n seeds; pi: the half-width of
the 95% prediction interval for one more run of ours (stats.prediction_interval; null
below stats.MIN_RUNS runs); pub: the published notebook's own log (reference.py); v:
where the published value falls, "consistent" (not rejected, not proven equal),
"above", "below", "too few runs", or "not run"; for a registered variant (params.yaml
`registration`: no published run) fin.v is instead the outcome of its criterion, "met" or
"not met" once every seed has run (registration_outcome). best.also: how many OTHER variants'
published best values our interval also contains (what the verdict cannot tell
apart). best.wu: the write-up's table value of best test, which is not always its
log's best (the report names each disagreement). params: ours. pp.best: our data path
against the published data path over the same seeds, the TOST verdict on the difference
of mean best test ("equivalent", "different", "inconclusive"; stats.welch), null where
not run; the final-epoch one is in the report (a second column would pass 200
characters). A value that does not exist is null (DVC shows "-").

Rows are sorted by path, so each file is named <step>_<variant>.json with the
variant's position in params.yaml: the rows then read in the drill-down's order, the
registered variants last. The criterion sits in fin.v rather than a column of its own: the
table already fills 196 of the 200 columns, and a column is as wide as its widest word.
The full detail (intervals' ends, the lists, every seed) is the report's.
"""

from __future__ import annotations

from pathlib import Path

from ..core.config import Params, RegistrationConfig
from ..core.errors import InputFileError
from .reference import PublishedRun, Reference
from .run_files import read_input
from .stats import also_contains, prediction_interval, welch

NOT_RUN = "not run"  # the verdicts of a variant not run yet
MET, NOT_MET = "met", "not met"  # a registered variant's outcome against its criterion
# table key -> (run-file key, PublishedRun attribute)
METRICS = {"best": ("best_test_acc", "log_best"), "fin": ("final_test_acc", "log_final_test")}


def table_file(table_dir: str | Path, params: Params, name: str) -> Path:
    names = list(params.variants)
    width = len(str(len(names)))
    return Path(table_dir) / f"{names.index(name) + 1:0{width}d}_{name}.json"


def published_values(reference: Reference, params: Params, metric: str) -> dict:
    """variant -> its published log's value of metric ("best" or "fin"), for those with an entry."""
    attr = METRICS[metric][1]
    return {name: getattr(reference.get(name), attr) for name in params.variants if reference.get(name)}


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def same_seeds(runs: list[dict], published_path_runs: list[dict], key: str) -> tuple[list, list, list]:
    """(seeds, ours, the published path's) values of key over the seeds both data paths have run."""
    ours = {r["seed"]: r[key] for r in runs}
    both = [c["metrics"] for c in published_path_runs if c["metrics"]["seed"] in ours]
    return [m["seed"] for m in both], [ours[m["seed"]] for m in both], [m[key] for m in both]


def same_seed_difference(runs: list[dict], published_path_runs: list[dict], key: str):
    """stats.welch of ours − the published path on key, over the seeds both have run (None below 2)."""
    _, ours, theirs = same_seeds(runs, published_path_runs, key)
    return welch(ours, theirs)


def _cell(metric: str, runs: list[dict], published: PublishedRun | None, comparable: bool, others: dict) -> dict:
    key, attr = METRICS[metric]
    pub = None if published is None else getattr(published, attr)
    cell = {"mean": None, "pi": None, "pub": pub, "v": NOT_RUN if not runs else None}
    if metric == "best":
        cell.update(also=None, wu=None if published is None else published.best_test)
    if not runs:
        return cell
    interval = prediction_interval([r[key] for r in runs])
    cell.update(mean=_round(interval.mean), pi=_round(interval.half_width))
    if comparable and pub is not None:
        cell["v"] = interval.verdict(pub)
        if metric == "best" and interval.half_width is not None:
            cell["also"] = len(also_contains(interval, others, published.name))
    return cell


def registration_outcome(runs: list[dict], registration: RegistrationConfig) -> str | None:
    """A registered variant's outcome against its criterion (registration.min_final_test_mean and
    min_seeds_at): MET or NOT_MET over all of registration.seeds, NOT_RUN with none run, and
    "k/N runs" with some (run_files.read_runs refuses those: a partial result is not an outcome);
    None for runs evaluated on a training holdout (the criterion is on the test set)."""
    if not runs:
        return NOT_RUN
    if runs[0].get("evaluated_on", "test") != "test":
        return None
    if len(runs) < len(registration.seeds):
        return f"{len(runs)}/{len(registration.seeds)} runs"
    return MET if registration.met([r["final_test_acc"] for r in runs]) else NOT_MET


def table_row(runs: list[dict], published: PublishedRun | None, others: dict,
              published_path_runs: list[dict] | None, margin: float,
              registration: RegistrationConfig | None = None) -> dict:
    """One variant's row. runs: its configured runs, its first seed's first (empty: not run yet);
    published: its reference entry or None; others: published_values(..., "best") of every
    variant; published_path_runs: its published-path reruns ([{"metrics", "history"}]) or
    None; margin: published_path.margin; registration: params.registration for a registered
    variant (fin.v is then its criterion's outcome), else None."""
    # The published numbers are test-set accuracies: runs evaluated on a training holdout have no verdict.
    comparable = bool(runs) and runs[0].get("evaluated_on", "test") == "test"
    diff = (same_seed_difference(runs, published_path_runs, "best_test_acc")
            if runs and published_path_runs else None)
    row = {"best": _cell("best", runs, published, comparable, others),
           "fin": _cell("fin", runs, published, comparable, others),
           "n": len(runs), "params": runs[0]["params"] if runs else None,
           "pp": {"best": None if diff is None else diff.equivalence(margin)}}
    if registration is not None:
        row["fin"]["v"] = registration_outcome(runs, registration)
    return row


def read_table(params: Params, table_dir: str | Path, runs: dict) -> dict:
    """variant -> its row, in params.yaml order; runs (run_files.read_runs) must be the ones it was made from."""
    rows = {}
    for name in params.variants:
        path = table_file(table_dir, params, name)
        row = read_input(path, "run `dvc repro compare`")
        n = row.get("n") if isinstance(row, dict) else None
        if n != len(runs[name]):
            # A row from before a run was added (or removed) would put its "not run" beside the run's figures.
            raise InputFileError(f"{path}: counts {n} runs of {name}, the run files {len(runs[name])}: stale; "
                                 "run `dvc repro compare`")
        rows[name] = row
    return rows
