"""The report's section on our data path against the published one, over the same seeds."""

from __future__ import annotations

from .markdown import markdown_table, pct
from ..compare.run_files import published_path_note
from ..compare.table import same_seed_difference, same_seeds
from .decisions import entry_of, when
from .equivalence import DIFFERENCE_HEADERS, KEYS, difference_cells, rule_text
from .inputs import ReportInputs


def _exploratory(record: dict) -> str:
    """A sentence when the record shows the margin was fixed with results of its own runs committed."""
    entry = entry_of(record, "published_path.margin")
    if not entry or not entry["own_results_before"]:
        return ""
    return (f" {entry['own_results_before']} results of the runs it judges were already committed when the margin "
            "was fixed, so the comparison is exploratory: a margin chosen with them in view cannot test them.")


def published_path_section(inputs: ReportInputs) -> list[str]:
    cfg = inputs.params.published_path
    lines = [
        f"The published notebooks' data path (DataLoader + PIL transforms) rerun on this pipeline for "
        f"{', '.join(f'`{n}`' for n in cfg.variants)}, seeds {', '.join(map(str, cfg.seeds))}, against our runs of "
        "the same seeds. Difference of means, ours − published path, with Welch's confidence intervals "
        f"(Welch–Satterthwaite df). {rule_text(cfg.margin, 'published_path.margin')} "
        f"The margin: {when(inputs.provenance, 'published_path.margin')}; "
        f"the seeds: {when(inputs.provenance, 'published_path.seeds')}.{_exploratory(inputs.provenance)}",
        "",
    ]
    rows, not_run = [], []
    for name in cfg.variants:
        published_path_runs, runs = inputs.published_path.get(name), inputs.runs[name]
        if not published_path_runs or not runs:
            not_run.append(f"- `{name}`: " + (published_path_note(inputs.params, name) if not published_path_runs
                                              else inputs.how_to_run(name)))
            continue
        for label, key in KEYS.items():
            diff = same_seed_difference(runs, published_path_runs, key)
            seeds, ours, theirs = same_seeds(runs, published_path_runs, key)
            rows.append([name, label, ", ".join(map(str, seeds)), ", ".join(map(pct, ours)),
                         ", ".join(map(pct, theirs)),
                         *difference_cells(diff, diff.equivalence(cfg.margin) if diff else None)])
    if rows:
        lines += [markdown_table(["Variant", "Metric", "Seeds", "Ours per seed", "Published path per seed",
                                  *DIFFERENCE_HEADERS], rows, numeric={5, 8}), ""]
    if not_run:
        lines += ["Not run yet (the table's `pp.best` is empty for them):", "", *not_run]
    return lines
