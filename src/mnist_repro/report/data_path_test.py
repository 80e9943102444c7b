"""The report's section on the confirmatory data-path test (params.yaml `data_path_test`; docs/statistics.md,
"The confirmatory data-path test"): per variant, final-epoch test accuracy on our data path against the
notebooks' over the same new seeds, Welch's difference of means and TOST against the margin, one verdict per
variant; best test accuracy beside it, with no verdict. The number of seeds is part of the rule, so the
verdict waits until every seed of both paths is in; until then the section counts the runs and names the
stages still to run."""

from __future__ import annotations

from ..compare.run_files import DATA_PATH_STAGES
from ..compare.stats import describe
from ..compare.table import same_seed_difference
from .decisions import seed_ranges, when
from .equivalence import DIFFERENCE_HEADERS, KEYS, difference_cells, rule_text
from .inputs import ReportInputs
from .markdown import markdown_table, names, pct

PRIMARY = "final test"  # the rule's metric: no epoch chosen on the test set; the other KEYS are reported only
SIDE_NAMES = {"ours": "our path", "published": "the published path"}
NO_VERDICT = "none (reported only)"


def _stages(stage: str, name: str, seeds: list[int]) -> str:
    """`dvc repro <stage>@<name>-<first>` ... `<stage>@<name>-<last>`, the first and last of seeds."""
    first = f"`dvc repro {stage}@{name}-{seeds[0]}`"
    return first if len(seeds) == 1 else f"{first} ... `{stage}@{name}-{seeds[-1]}`"


def _mean_sd(values: list[float]) -> str:
    d = describe(values)
    return f"{pct(d['mean'])} ({d['sd']:.3f})"


def power_text(inputs: ReportInputs) -> str:
    """What the test can and cannot tell apart, with the planned power from research/data_path_power.json."""
    cfg, record, n = inputs.params.data_path_test, inputs.data_path_power, len(inputs.params.data_path_test.seeds)
    text = (f"What it can tell apart: *equivalent* says the true difference lies within ±{cfg.margin:.2f} points "
            "(TOST at 5%: a true difference at or beyond the margin is called equivalent at most 5% of the time); "
            "it cannot tell a difference inside the margin from none, and *inconclusive* shows neither. ")
    if record is None:
        return text + "No planned power is given (the report stage's --data-path-power)."
    if record["margin"] != cfg.margin or record["metric"] != KEYS[PRIMARY]:
        return text + (f"The planned power in `research/data_path_power.json` is for margin {record['margin']} on "
                       f"{record['metric']}, not this rule's: it is not stated (rerun research/data_path_power.py).")
    known = {name: record["variants"].get(name, {}).get("power_equivalent_if_no_difference", {}).get(str(n))
             for name in cfg.variants}
    stated = [f"{known[name]:.0%} for `{name}` (SD ours {e['ours']['sd']:.3f} over {len(e['ours']['seeds'])} "
              f"seeds, published path {e['published_path']['sd']:.3f} over {len(e['published_path']['seeds'])})"
              for name in cfg.variants if known[name] is not None for e in [record["variants"][name]]]
    missing = [name for name in cfg.variants if known[name] is None]
    text += (f"Planned power (`research/data_path_power.json`, simulated from the spreads of the committed runs, "
             f"not from these): if the paths do not differ, the chance of *equivalent* at n = {n} a side is "
             + ("; ".join(stated) if stated else "not simulated for any variant") + ".")
    if missing and stated:
        text += f" Not simulated at n = {n} for {names(missing)}."
    return text


def _variant_status(inputs: ReportInputs, name: str) -> tuple[list, str | None]:
    """(table rows, None) for a variant with every seed of both paths in; else ([], its line)."""
    cfg = inputs.params.data_path_test
    n, test = len(cfg.seeds), inputs.data_path_test
    runs = {side: [r["metrics"] for r in test.get(side, {}).get(name, [])] for side in DATA_PATH_STAGES}
    counts = {side: len(runs[side]) for side in DATA_PATH_STAGES}
    if not any(counts.values()):
        return [], (f"- `{name}`: not run yet: "
                    + " and ".join(_stages(stage, name, cfg.seeds) for stage in DATA_PATH_STAGES.values()))
    if any(c < n for c in counts.values()):
        left = [f"{_stages(stage, name, missing)} (seeds {seed_ranges(missing)})"
                for side, stage in DATA_PATH_STAGES.items()
                for missing in [[s for s in cfg.seeds if s not in {r['seed'] for r in runs[side]}]] if missing]
        return [], (f"- `{name}`: {counts['ours']} of {n} seeds in on our path, {counts['published']} of {n} on the "
                    f"published path: no verdict until all {n} of both are in. Still to run: " + " and ".join(left))
    evaluated = runs["ours"][0].get("evaluated_on", "test")
    if evaluated != "test":
        return [], (f"- `{name}`: its runs were evaluated on {evaluated}, not the test set: the rule's metric is "
                    "test accuracy, so no verdict")
    published = [{"metrics": m} for m in runs["published"]]
    rows = []
    for label in (PRIMARY, *(k for k in KEYS if k != PRIMARY)):
        key = KEYS[label]
        diff = same_seed_difference(runs["ours"], published, key)
        verdict = (diff.equivalence(cfg.margin) if label == PRIMARY else NO_VERDICT) if diff else None
        rows.append([name, label, seed_ranges(cfg.seeds), n, _mean_sd([m[key] for m in runs["ours"]]),
                     _mean_sd([m[key] for m in runs["published"]]), *difference_cells(diff, verdict)])
    return rows, None


def data_path_test_section(inputs: ReportInputs) -> list[str]:
    cfg, record = inputs.params.data_path_test, inputs.provenance
    if not cfg.variants or not cfg.seeds:
        return ["No data-path test configured (`data_path_test.variants` or `data_path_test.seeds` is empty)."]
    n = len(cfg.seeds)
    lines = [
        f"The confirmatory version of the comparison above, written in `params.yaml` (`data_path_test`) and "
        "docs/statistics.md (\"The confirmatory data-path test\"). Each seed of `data_path_test.seeds` "
        f"({seed_ranges(cfg.seeds)}: n = {n} a side, none of them a table run of these variants) trains each of "
        f"`data_path_test.variants` ({names(cfg.variants)}) once on our data path (stages "
        f"`{DATA_PATH_STAGES['ours']}@<variant>-<seed>`) and once on the notebooks' "
        f"(`{DATA_PATH_STAGES['published']}@<variant>-<seed>`), in files of their own outside the table. "
        f"Per variant, on {PRIMARY} accuracy (the last epoch's: no epoch chosen on the test set): the difference "
        "of means, ours − published path, with Welch's confidence intervals (Welch–Satterthwaite df). "
        f"{rule_text(cfg.margin, 'data_path_test.margin')} Each variant's verdict is its own claim; the other "
        f"metric ({', '.join(k for k in KEYS if k != PRIMARY)}) is reported beside it with no verdict. No verdict "
        f"either until all n = {n} seeds of both paths are in: n is part of the rule, and a verdict on the seeds "
        "done so far would be one chosen by the clock.",
        "",
        "When its parts were fixed, from the provenance record (section \"Provenance\"):",
        "",
        f"- the variants (`data_path_test.variants`): {when(record, 'data_path_test.variants')};",
        f"- the seeds (`data_path_test.seeds`): {when(record, 'data_path_test.seeds')};",
        f"- the margin (`data_path_test.margin`): {when(record, 'data_path_test.margin')}.",
        "",
        power_text(inputs),
        "",
    ]
    rows, waiting = [], []
    for name in cfg.variants:
        variant_rows, line = _variant_status(inputs, name)
        rows += variant_rows
        if line:
            waiting.append(line)
    total = sum(len(runs) for side in inputs.data_path_test.values() for runs in side.values())
    planned = 2 * n * len(cfg.variants)
    verdicts = [f"`{r[0]}` *{r[-1]}*" for r in rows if r[1] == PRIMARY]
    if not total:
        lines += [f"**Outcome: not run yet** (0 of {planned} runs): "
                  f"`dvc repro {' '.join(DATA_PATH_STAGES.values())}` runs them all.", ""]
    elif verdicts:
        lines += [f"**Outcome ({PRIMARY}, per variant):** {', '.join(verdicts)}"
                  + (f"; {len(waiting)} of {len(cfg.variants)} variants without a verdict yet." if waiting else "."),
                  ""]
    else:
        lines += [f"**Outcome: no verdict yet**: {total} of {planned} runs in.", ""]
    if rows:
        lines += [markdown_table(["Variant", "Metric", "Seeds", "n a side", "Ours mean (SD)",
                                  "Published path mean (SD)", *DIFFERENCE_HEADERS], rows, numeric={3, 6, 9}), ""]
    if waiting:
        lines += ["Not complete yet:", "", *waiting]
    return lines
