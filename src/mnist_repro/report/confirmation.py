"""The report's section on the confirmation of a variant (params.yaml `confirmation`), beside the test set's
earlier uses of the same design: what it shows, what it cannot, and when its parts were fixed (from the
provenance record)."""

from __future__ import annotations

from .markdown import markdown_table, pct, plural
from ..compare.run_files import confirmation_note
from ..compare.stats import describe, prediction_interval
from .decisions import when
from .inputs import ReportInputs


def _use_row(label: str, commit: str, model: str, params: int, runs: list[dict], threshold: float) -> list:
    finals = [r["final_test_acc"] for r in runs]
    d, interval = describe(finals), prediction_interval(finals)
    return [label, commit, f"{model} ({params:,})", ", ".join(str(r["seed"]) for r in runs),
            ", ".join(map(pct, finals)), ", ".join(pct(r["best_test_acc"]) for r in runs), f"{d['mean']:.2f}",
            f"{d['sd']:.3f}" if len(finals) > 1 else "–", pct(interval.low),
            f"{sum(f >= threshold for f in finals)} of {len(finals)}"]


def confirmation_section(inputs: ReportInputs) -> list[str]:
    cfg = inputs.params.confirmation
    runs = [c["metrics"] for c in inputs.confirmation]
    threshold, seeds = cfg.min_final_test_mean, ", ".join(map(str, cfg.seeds)) or "(none configured)"
    record = inputs.provenance
    lines = [f"What it is: `{cfg.variant}`'s recipe (`variants.{cfg.variant}`) trained with seeds {seeds} and scored "
             f"on the same test set, against a criterion (`confirmation.min_final_test_mean`): the mean final-epoch "
             f"test accuracy over those seeds is at least {threshold:.2f}%. Reported whatever the outcome, with the "
             "lower end of the 95% prediction interval for one more run and how many seeds end at the threshold or "
             "above. It shows whether the result repeats across seeds. It cannot show that the design generalises "
             "beyond this test set: the same 10,000 images judged the earlier designs listed below. When its parts "
             "were fixed, from the provenance record (section \"Provenance\"):", "",
             f"- the recipe (`recipe:{cfg.variant}`): {when(record, f'recipe:{cfg.variant}')};",
             f"- the seeds (`confirmation.seeds`): {when(record, 'confirmation.seeds')};",
             f"- the criterion (`confirmation.min_final_test_mean`): "
             f"{when(record, 'confirmation.min_final_test_mean')}.", ""]
    if not runs:
        lines += [f"**Outcome: {confirmation_note(inputs.params)}.**", ""]
    else:
        d, interval = describe([r["final_test_acc"] for r in runs]), prediction_interval(
            [r["final_test_acc"] for r in runs])
        met = "met" if d["mean"] >= threshold else "not met"
        low = f"{interval.low:.2f}" if interval.low is not None else "none (too few runs)"
        lines += [f"**Outcome: criterion {met}**: mean final test {d['mean']:.2f}% (SD {d['sd']:.3f}) over "
                  f"{plural(len(runs), 'seed')}, prediction interval's lower end {low}, "
                  f"{sum(r['final_test_acc'] >= threshold for r in runs)} of {len(runs)} seeds at {threshold:.2f}% "
                  "or above.", ""]
    uses = [u for u in inputs.test_set_uses if u["variant"] == cfg.variant]
    model = inputs.params.variants[cfg.variant].model
    rows = [_use_row(f"{i}. {u['use']}", f"`{u['commit'][:7]}`", u["model"], u["params"], u["runs"], threshold)
            for i, u in enumerate(uses, 1)]
    if runs:
        rows.append(_use_row(f"{len(rows) + 1}. confirmation (`confirm@<seed>`)", "–", model, runs[0]["params"], runs,
                             threshold))
    if not uses:
        lines += [f"No earlier use of the test set for `{cfg.variant}` is recorded (`test_set_uses.json` in the "
                  "search directory, written by `research/test_set_uses.py`).", ""]
    else:
        lines += [f"Every use of the test set for `{cfg.variant}`'s design, in order. The earlier ones are read "
                  "from the commits that hold them (`research/test_set_uses.py` wrote "
                  "`metrics/search/test_set_uses.json`); each later design was chosen after the earlier uses were "
                  "seen.", ""]
    passed = [f"{i}. {u['use']} (`{u['commit'][:7]}`, {u['model']}, mean final "
              f"{describe([r['final_test_acc'] for r in u['runs']])['mean']:.2f})" for i, u in enumerate(uses, 1)
              if u["model"] != model and describe([r["final_test_acc"] for r in u["runs"]])["mean"] >= threshold]
    if passed:
        lines += [f"The criterion is a mean over seeds, not a count of seeds at {threshold:.2f}%: by it, "
                  f"{'; '.join(passed)}, a design the search replaced, would have passed too.", ""]
    if rows:
        lines.append(markdown_table(["Use", "Commit", "Model (params)", "Seeds", "Final test per seed",
                                     "Best test per seed", "Mean final", "SD", "PI low", f"Final ≥ {threshold:.2f}"],
                                    rows, numeric={6, 7, 8}))
    return lines
