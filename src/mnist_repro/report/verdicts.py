"""The report's verdict sections: side by side, the rule, what each verdict can tell apart,
where the write-up disagrees with its own logs, and every seed."""

from __future__ import annotations

from .markdown import markdown_table, names, pair, pct, plural
from ..compare.stats import (LEVEL, MIN_RUNS, POWER, TOO_FEW, also_contains, detectable_shift, prediction_interval,
                     seed_summary, t_quantile)
from ..compare.table import METRICS, NOT_RUN, published_values
from .inputs import ReportInputs

LABEL = {"best": "best test", "fin": "final test"}


def interval_text(values: list[float]) -> str:
    i = prediction_interval(values)
    if i.half_width is None:
        return f"{i.mean:.2f} (n = {i.n}, no interval)"
    return f"{i.mean:.2f} [{i.low:.2f}, {i.high:.2f}]"


def side_by_side(inputs: ReportInputs) -> str:
    headers = ["Variant", "n", "Params: ours / published", "Best test: ours, mean [95% PI]", "published (log)",
               "verdict", "Final test: ours, mean [95% PI]", "published (log)", "verdict",
               "Best train: ours mean / published (log)", f"Best epoch: ours (seed {inputs.params.train.seed}) / "
               "published"]
    rows = []
    for name, runs in inputs.runs.items():
        pub, row = inputs.reference.get(name), inputs.table[name]
        if not runs:
            rows.append([name, 0, pair(None, pub and pub.params, lambda v: f"{v:,}"), inputs.how_to_run(name),
                         pct(row["best"]["pub"]), NOT_RUN, "–", pct(row["fin"]["pub"]), NOT_RUN,
                         pair(None, pub and pub.log_best_train, pct), pair(None, pub and pub.log_best_test["epoch"])])
            continue
        s = seed_summary(runs)
        # a registered variant: fin.v is its criterion's outcome, its first run another seed than train.seed
        registered = inputs.params.registered(name)
        rows.append([name, len(runs), pair(runs[0]["params"], pub and pub.params, lambda v: f"{v:,}"),
                     interval_text([r["best_test_acc"] for r in runs]), pct(row["best"]["pub"]), row["best"]["v"],
                     interval_text([r["final_test_acc"] for r in runs]), pct(row["fin"]["pub"]),
                     f"criterion {row['fin']['v']}" if registered and row["fin"]["v"] else row["fin"]["v"],
                     pair(s["best_train"]["mean"], pub and pub.log_best_train, pct),
                     pair(f"{runs[0]['best_test_epoch']} (seed {runs[0]['seed']})" if registered
                          else runs[0]["best_test_epoch"], pub and pub.log_best_test["epoch"])])
    return markdown_table(headers, rows, numeric={1, 4, 7})


def rule_section(inputs: ReportInputs) -> list[str]:
    ns = sorted({len(runs) for runs in inputs.ran.values() if len(runs) >= MIN_RUNS})
    ts = ", ".join(f"t(0.975, {n - 1}) = {t_quantile((1 + LEVEL) / 2, n - 1):.4f}" for n in ns)
    return [
        "Each published number is one run; ours are the n seeds `params.yaml` lists for the variant, every one "
        "of them. For each variant and each of best-epoch and final-epoch test accuracy, the 95% prediction "
        "interval for one more run of our code is",
        "",
        "    mean ± t(0.975, n − 1) · SD · sqrt(1 + 1/n)",
        "",
        f"over our seeds (SD: sample standard deviation, ddof 1){'; here ' + ts if ts else ''}. Both sides are "
        "measured on the same 10,000 test images, so there is no binomial term: the seed spread already holds "
        "the test set's noise. The verdict says where the published value falls: *consistent* (inside, ends "
        "included), *above* or *below*. *Consistent* means not rejected, not proven equal: how much it can tell "
        f"apart is the next section. With n < {MIN_RUNS} there is no interval and the verdict is *{TOO_FEW}*. "
        "The best-test numbers on both sides are the highest of 15 per-epoch test evaluations (the test set "
        "chose the epoch, the same way on both sides); the final-epoch verdict has no such selection. "
        "docs/statistics.md states the rules.",
    ]


def power_section(inputs: ReportInputs) -> list[str]:
    rows = []
    for metric, (key, _) in METRICS.items():
        others = published_values(inputs.reference, inputs.params, metric)
        for name, runs in inputs.ran.items():
            interval = prediction_interval([r[key] for r in runs])
            if interval.half_width is None or name not in others:
                continue
            also = also_contains(interval, others, name)
            shift = detectable_shift(interval.n, interval.sd)
            rows.append([name, LABEL[metric], interval.n, f"[{interval.low:.2f}, {interval.high:.2f}]",
                         pct(others[name]), interval.verdict(others[name]), f"{shift:.2f}", len(also),
                         names(f"{n} ({others[n]:.2f})" for n in also)])
    if not rows:
        return [f"No variant has {MIN_RUNS} runs and a published value yet."]
    return ["What a verdict can tell apart, two ways. *Detectable shift*: the smallest difference δ between the "
            f"published run's expected value and ours that the rule would flag with {POWER:.0%} power, if the "
            "published run were one run of our code shifted by δ. Then (published − mean) / (SD · sqrt(1 + 1/n)) is "
            "noncentral t with n − 1 df and noncentrality δ / (SD · sqrt(1 + 1/n)), our SD taken as the true "
            f"spread, and δ solves P(|T| > t(0.975, n − 1)) = {POWER:.2f} (about (t(0.975, n − 1) + "
            f"t({POWER:.2f}, n − 1)) · SD · sqrt(1 + 1/n)); `stats.detectable_shift`. A shift of δ or more would "
            "usually have been flagged; a smaller one would mostly read *consistent* too, so a *consistent* verdict "
            "with a large δ says little. *Others inside*: the "
            "other variants whose published value the interval also contains; a *consistent* verdict cannot tell "
            "this variant's recipe from theirs (the table's `best.also` counts them for best test).", "",
            markdown_table(["Variant", "Metric", "n", "Our 95% PI", "Its published value", "Verdict",
                            f"Detectable shift ({POWER:.0%} power)", "Others inside",
                            "Other variants' published values inside"], rows, numeric={2, 4, 6, 7})]


def disagreements(inputs: ReportInputs) -> list[str]:
    """Where the write-up's table differs from its own notebook's log; the table uses the log."""
    facts = []
    for name in inputs.params.variants:
        pub = inputs.reference.get(name)
        if pub is None:
            continue
        if pub.best_test != pub.log_best:
            final = " (the log's final epoch)" if pub.best_test == pub.log_final_test else ""
            facts.append(f"- `{name}`: write-up best test {pub.best_test:.2f}{final}; its log's best is "
                         f"{pub.log_best:.2f} at epoch {pub.log_best_test['epoch']} (the table's `best.pub`; "
                         "`best.wu` keeps the write-up's)")
        if pub.best_train != pub.log_best_train:
            facts.append(f"- `{name}`: write-up best train {pub.best_train:.2f}; its log's best (the running "
                         f"accuracy of each epoch's last batch) is {pub.log_best_train:.2f}, used here")
    return ["Every published value in the table and above is from the notebook's own log "
            "(`reference/published.json`, `logs`); the write-up's table differs from it here:", "",
            *(facts or ["- nowhere: every write-up value equals its log's"])]


def seeds_section(inputs: ReportInputs) -> list[str]:
    target = inputs.reference.target_acc
    rows = []
    for name, runs in inputs.runs.items():
        if not runs:
            rows.append([name, 0, inputs.how_to_run(name), "–", "–", "–"])
            continue
        rows.append([name, len(runs), ", ".join(str(r["seed"]) for r in runs),
                     ", ".join(f"{r['best_test_acc']:.2f}" for r in runs),
                     ", ".join(f"{r['final_test_acc']:.2f}" for r in runs),
                     f"{sum(r['final_test_acc'] >= target for r in runs)} of {len(runs)}"])
    return [f"Every run of each variant, in seed order, {plural(sum(map(len, inputs.ran.values())), 'run')} "
            "in all; none is left out.", "",
            markdown_table(["Variant", "n", "Seeds", "Best test per seed", "Final test per seed",
                            f"Final test ≥ {target:.2f}%"], rows, numeric={1})]
