"""The report's markdown, assembled from its sections (one function each, in their own modules)."""

from __future__ import annotations

from pathlib import Path

from .markdown import link
from .across import across_section
from .confirmation import confirmation_section
from .data_path_test import data_path_test_section
from .decisions import provenance_section
from .epochs import gap_section, outside_section
from .inputs import ReportInputs
from .compile_check import compile_check_section
from .machine import model_cards, precision_section, runs_section, steps_section, wall_time_section
from .outputs import MISCLASSIFIED_SHOWN
from .paths import published_path_section
from .registration import registration_section
from .search import search_section
from .verdicts import disagreements, power_section, rule_section, seeds_section, side_by_side


def intro(inputs: ReportInputs, src: dict) -> list[str]:
    lines = [f"# Reproduction report: {len(inputs.table)} variants against the published drill-down", "",
             f"Rendered by `stages/report.py` from `params.yaml`, the published table and logs in {src['reference']}, "
             f"the comparison table in {src['table']} (`dvc repro compare`; `dvc metrics show --md` prints it) and "
             f"the run files in {src['runs']}. No number here is typed by hand.", ""]
    if inputs.not_run:
        lines += [f"**{len(inputs.not_run)} of {len(inputs.runs)} variants not run yet**: "
                  + ", ".join(f"`{n}` (`dvc repro {inputs.repro(n)}`)"
                              for n in inputs.not_run)
                  + ". Every table lists them as not run, with their published numbers; totals count only the "
                  "runs that exist.", ""]
    return lines


def verdict_sections(inputs: ReportInputs) -> list[str]:
    no_verdict = [name for name, row in inputs.table.items() if row["best"]["v"] is None]
    lines = ["## Side by side", "", side_by_side(inputs), "",
             "*Published*: the notebook's own log (best test, its epoch, final test, best train). *PI*: the 95% "
             "prediction interval for one more run of ours; the verdict is where the published value falls.", "",
             "### The verdict rule", "", *rule_section(inputs), ""]
    if no_verdict:
        lines += [f"No verdict for {', '.join(f'`{n}`' for n in no_verdict)}: no published entry, or runs "
                  "evaluated on a training holdout rather than the test set.", ""]
    return lines + ["### What each verdict can tell apart", "", *power_section(inputs), "",
                    "## Across variants: the published run against our mean (exploratory)", "",
                    *across_section(inputs), "",
                    "## Where the write-up disagrees with its own logs", "", *disagreements(inputs), "",
                    "## Every seed", "", *seeds_section(inputs), ""]


def search_sections(inputs: ReportInputs, link_to: dict) -> list[str]:
    lines = []
    for name, record in inputs.searches.items():
        if inputs.params.registered(name):
            continue  # in its registered variant's section
        uses = sum(u["variant"] == name for u in inputs.test_set_uses)
        lines += [f"## Design search: {name}", "", *search_section(name, record, inputs.params, uses), ""]
    for name in inputs.params.registration.variants:
        lines += [f"## Registered variant: {name}", "", *registration_section(inputs, name, link_to), ""]
    lines += [f"## Confirmation: {inputs.params.confirmation.variant}", "", *confirmation_section(inputs), "",
              "## Provenance: when each decision was fixed", "", *provenance_section(inputs.provenance), ""]
    return lines


def curve_sections(inputs: ReportInputs, link_to: dict) -> list[str]:
    lines = ["## Outside the interval", "", *outside_section(inputs), "",
             "## Our data path against the published data path", "", *published_path_section(inputs), "",
             "## The confirmatory data-path test", "", *data_path_test_section(inputs), "",
             "## Per-epoch gap to the published logs", "", *gap_section(inputs), ""]
    if "overlay" in link_to:
        lines += [f"![test accuracy of every variant run]({link_to['overlay']})", ""]
    for name, histories in inputs.histories.items():
        lines += [f"### {name}", ""]
        if not histories:
            lines += [f"`{name}` is {inputs.how_to_run(name)}"
                      + ("; the published run alone:" if name in link_to else "; no published log either."), ""]
        if name in link_to:
            against = ("against the published run" if inputs.reference.get(name) else "over our seeds") \
                if histories else "of the published run"
            lines += [f"![{name}: test accuracy per epoch {against}]({link_to[name]})", ""]
    return lines


def misclassified_section(inputs: ReportInputs, link_to: dict) -> list[str]:
    errors, name = inputs.errors, inputs.final_variant.name
    if errors is None:
        return [f"`{name}` is {inputs.how_to_run(name)}; its misclassified test images are shown once it has run."]
    if "misclassified" not in link_to:
        return [f"`{name}` was evaluated on {errors.get('evaluated_on')}, not the test set: no test digits to show."]
    wrong, total = len(errors["misclassified"]), errors["test_images"]
    final = inputs.runs[name][0]["final_test_acc"]
    return [f"`{name}` (seed {errors['seed']}), after its last epoch, misclassifies {wrong:,} of {total:,} test "
            f"images, an accuracy of {100 * (total - wrong) / total:.2f}% (final test accuracy in its run file: "
            f"{final:.2f}%). The first {min(wrong, MISCLASSIFIED_SHOWN)} in test-set order:", "",
            f"![misclassified test images of {name}]({link_to['misclassified']})"]


def render_report(inputs: ReportInputs, figures: dict[str, Path], report_dir: Path, sources: dict[str, Path]) -> str:
    link_to = {key: link(path, report_dir) for key, path in figures.items()}
    # Shown as paths from the project root (the report's parent directory in dvc.yaml's layout), linked relative
    # to the report.
    src = {key: f"[{link(path, report_dir.parent)}]({link(path, report_dir)})" for key, path in sources.items()}
    lines = [*intro(inputs, src), "## The runs", "", *runs_section(inputs), "",
             "The drill-down, one step per variant:", "", *steps_section(inputs.params, inputs.reference), "",
             *verdict_sections(inputs), *search_sections(inputs, link_to), *curve_sections(inputs, link_to),
             "## Mixed precision", "", *precision_section(inputs.params, inputs.precision), "",
             "## Compiled against eager", "", *compile_check_section(inputs.params, inputs.runs, inputs.compile_check,
                                                                     inputs.how_to_run), "",
             "## Wall time", "", *wall_time_section(inputs), "",
             f"## Misclassified test images: {inputs.final_variant.name}", "", *misclassified_section(inputs, link_to),
             "", "## Model cards", "", *model_cards(inputs.params)]
    return "\n".join(lines).rstrip() + "\n"
