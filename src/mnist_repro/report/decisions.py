"""The report's provenance section: when each decision behind the table was fixed, and how many
test-set results were committed then (mnist_repro.compare.provenance's record). Every sentence here
about when something was decided is produced from the record."""

from __future__ import annotations

from .markdown import markdown_table
from ..compare.provenance import BEFORE, NOT_COMMITTED


def _commit(entry: dict) -> str:
    return "–" if entry["commit"] is None else f"`{entry['commit'][:7]}` ({entry['date'][:10]})"


def _commits(entry: dict) -> str:
    return ", ".join(f"`{c[:7]}`" for c in entry["result_commits"]) or "–"


def seed_ranges(seeds: list[int]) -> str:
    """1, 2, 3, 5 -> "1–3, 5"."""
    parts, run = [], []
    for s in sorted(seeds):
        if run and s == run[-1] + 1:
            run.append(s)
            continue
        if run:
            parts.append(f"{run[0]}–{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)))
        run = [s]
    if run:
        parts.append(f"{run[0]}–{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)))
    return ", ".join(parts)


def _value(entry: dict) -> str:
    value = entry["value"]
    if entry["id"].startswith("recipe:"):
        return f"`{value['model']}`, " + ", ".join(f"{k} {v}" for k, v in value.items() if k != "model")
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return seed_ranges(value)
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "(none)"
    return str(value)


def entry_of(record: dict, decision: str) -> dict | None:
    return next((e for e in record.get("decisions", []) if e["id"] == decision), None)


def when(record: dict, decision: str) -> str:
    """One clause on when a decision was fixed, from the record: its class, commit and own runs."""
    entry = entry_of(record, decision)
    if not record.get("decisions"):
        return "not known here (no git history: section \"Provenance\")"
    if entry is None:
        return "not a decision the record holds"
    if entry["class"] == NOT_COMMITTED:
        return "its current value is not committed yet"
    own = entry["own_results_before"]
    theirs = (f"{own} of them of the runs it governs" if own
              else "none of the runs it governs had a committed result")
    return f"{entry['class']} ({entry['scope']}; commit {_commit(entry)}; {theirs})"


def _group_runs(entries: list[dict]) -> list[list]:
    """Runs of one data path and variant with the same commit, class and own count, seeds merged."""
    groups: dict = {}
    for e in entries:
        kind, variant, seed = e["id"].removeprefix("run:").split("/")
        key = (kind, variant, e["commit"], e["class"], e["own_results_before"] > 0)
        groups.setdefault(key, []).append((int(seed), e))
    rows = []
    for (kind, variant, _, cls, _), items in groups.items():
        first = items[0][1]
        rows.append([kind, f"`{variant}`", seed_ranges([s for s, _ in items]), _commit(first), cls,
                     first["results_before"], _commits(first), sum(e["own_results_before"] for _, e in items)])
    return rows


def provenance_section(record: dict) -> list[str]:
    """The section: the counting rule, the settings and the runs, each with its commit and class."""
    entries = record.get("decisions", [])
    if not entries:
        line = record.get("history", "no provenance record")
        return [line[:1].upper() + line[1:] + "."]
    summary = record["summary"]
    lines = [f"Read from git history by `mnist_repro.compare.provenance` into `metrics/provenance.json`: of "
             f"{summary['decisions']} decisions behind the table, {summary[BEFORE]} are `{BEFORE}`, "
             f"{summary['fixed after results']} are fixed after test-set results that could have informed them"
             + (f", {summary[NOT_COMMITTED]} are not committed yet" if summary[NOT_COMMITTED] else "")
             + f". The counting rule: {record['rule']}", ""]
    settings = [e for e in entries if not e["id"].startswith("run:")]
    lines += ["The settings (`Results then`: results that could have informed the decision, by the rule; "
              "`Own`: how many of those are results of the runs the decision itself governs):", "",
              markdown_table(["Decision", "Value", "Fixed in", "Class", "Results then", "Their commits", "Own"],
                             [[f"`{e['id']}`", _value(e), _commit(e), e["class"], e["results_before"], _commits(e),
                               e["own_results_before"]] for e in settings], numeric={4, 6}), ""]
    runs = [e for e in entries if e["id"].startswith("run:")]
    if runs:
        lines += ["Each run's seed (runs of one data path and variant fixed in the same commit, grouped; `Own`: "
                  "results of these same runs already committed then, from an earlier place of the seed in "
                  "`params.yaml` or an earlier layout):", "",
                  markdown_table(["Data path", "Variant", "Seeds", "Fixed in", "Class", "Results then",
                                  "Their commits", "Own"], _group_runs(runs), numeric={5, 7})]
    return lines
