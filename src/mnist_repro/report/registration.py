"""The report's section on a registered variant (params.yaml `registration`): its design search, when its
parts were fixed (from the provenance record), its outcome against the criterion, every seed, and where
it sits beside the designs it is measured against, on parameters and mean final-epoch test accuracy."""

from __future__ import annotations

from ..compare.stats import describe
from ..compare.table import registration_outcome
from .decisions import seed_ranges, when
from .inputs import ReportInputs
from .markdown import markdown_table, pct, plural
from .search import search_section
from .verdicts import interval_text

BESIDE = ("under_5k", "lr_scheduler")  # the designs a registered variant is set beside, where params.yaml has them


def _fixed(inputs: ReportInputs, name: str) -> list[str]:
    record = inputs.provenance
    return [f"- the recipe (`recipe:{name}`): {when(record, f'recipe:{name}')};",
            f"- the seeds (`registration.seeds`): {when(record, 'registration.seeds')};",
            f"- the criterion's mean (`registration.min_final_test_mean`): "
            f"{when(record, 'registration.min_final_test_mean')};",
            f"- the criterion's count (`registration.min_seeds_at`): {when(record, 'registration.min_seeds_at')}."]


def _outcome(inputs: ReportInputs, name: str) -> list[str]:
    cfg, runs = inputs.params.registration, inputs.runs[name]
    threshold = cfg.min_final_test_mean
    if not runs:
        return [f"**Outcome: not run yet** (`dvc repro {inputs.repro(name)}`: its {len(cfg.seeds)} runs; there is "
                "no outcome until every seed has run)."]
    finals = [r["final_test_acc"] for r in runs]
    outcome, d = registration_outcome(runs, cfg), describe(finals)
    at = sum(f >= threshold for f in finals)
    if outcome is None:
        return [f"**No outcome**: its runs were evaluated on {runs[0].get('evaluated_on')}, not the test set."]
    rows = [[r["seed"], pct(r["final_test_acc"]), f"{r['best_test_acc']:.2f} ({r['best_test_epoch']})",
             "yes" if r["final_test_acc"] >= threshold else "no"] for r in runs]
    return [f"**Outcome: criterion {outcome}**: mean final test {d['mean']:.2f}% (SD {d['sd']:.3f}) over "
            f"{plural(len(runs), 'seed')}, at least {threshold:.2f}% needed; {at} of {len(runs)} seeds at "
            f"{threshold:.2f}% or above, at least {cfg.min_seeds_at} needed. Mean final test and the 95% prediction "
            f"interval for one more run (the table's rule): {interval_text(finals)}.", "",
            markdown_table(["Seed", "Final test", "Best test (epoch)", f"Final ≥ {threshold:.2f}"], rows,
                           numeric={0, 1})]


def _beside(inputs: ReportInputs, name: str, link_to: dict) -> list[str]:
    threshold = inputs.params.registration.min_final_test_mean
    others = [b for b in BESIDE if b in inputs.params.variants and b != name]
    rows = []
    for variant in (name, *others):
        runs = inputs.runs[variant]
        if not runs:
            rows.append([f"`{variant}`", "–", 0, inputs.how_to_run(variant), "–"])
            continue
        finals = [r["final_test_acc"] for r in runs]
        rows.append([f"`{variant}`", f"{runs[0]['params']:,}", len(runs), interval_text(finals),
                     f"{sum(f >= threshold for f in finals)} of {len(finals)}"])
    beside = (f"Beside {', '.join(f'`{o}`' for o in others)}" if others
              else f"Alone (params.yaml has none of {', '.join(f'`{b}`' for b in BESIDE)})")
    lines = [f"{beside}: trainable parameters and mean final-epoch test accuracy with its 95% prediction interval, "
             "over each variant's own seeds (not the registered seeds: not a paired comparison).", "",
             markdown_table(["Variant", "Parameters", "n", "Mean final test [95% PI]", f"Final ≥ {threshold:.2f}"],
                            rows, numeric={1, 2})]
    if "pareto" in link_to:
        lines += ["", f"![trainable parameters against mean final test accuracy, every variant run]"
                      f"({link_to['pareto']})"]
    return lines


def registration_section(inputs: ReportInputs, name: str, link_to: dict) -> list[str]:
    """The section of registered variant `name`; link_to: figure key -> its link from the report."""
    cfg, variant = inputs.params.registration, inputs.params.variants[name]
    threshold = cfg.min_final_test_mean
    lines = [f"`{name}` (`registration.variants.{name}`, model `{variant.model}`): {variant.target}. It trains "
             f"seeds {seed_ranges(list(cfg.seeds))} (`registration.seeds`; stages `registered@{name}-<seed>`, no "
             f"`train.seed` run) and is judged by its criterion: a mean final-epoch test accuracy over those seeds "
             f"of at least {threshold:.2f}% (`registration.min_final_test_mean`), with at least {cfg.min_seeds_at} "
             f"of the {len(cfg.seeds)} seeds at {threshold:.2f}% or above (`registration.min_seeds_at`). Met or "
             "not met, the outcome is a result and is reported here. When its parts were fixed, from the "
             "provenance record (section \"Provenance\"):", "", *_fixed(inputs, name), "",
             *_outcome(inputs, name), "", *_beside(inputs, name, link_to), ""]
    record = inputs.searches.get(name)
    if record is None:
        lines += [f"No design-search record for `{name}` in the search directory (`research/search.py` writes one)."]
    else:
        uses = sum(u["variant"] == name for u in inputs.test_set_uses)
        lines += [f"### Design search: {name}", "", *search_section(name, record, inputs.params, uses)]
    return lines
