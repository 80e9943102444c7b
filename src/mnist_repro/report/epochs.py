"""The report's per-epoch sections: facts about variants outside our interval, and the gap to the published logs."""

from __future__ import annotations

from .markdown import markdown_table, plural
from ..compare.reference import PublishedRun
from ..compare.run_files import published_path_note
from ..compare.stats import (CHANCE_ACC, GAP_AFTER_EPOCH, SWING_EPOCHS, TREND_EPOCHS, largest_gap, largest_swing, mean_curve,
                     prediction_interval, stalled_epochs, trend)
from ..compare.table import same_seed_difference
from .inputs import ReportInputs


def _accs(history) -> list[float]:
    return [e["test_acc"] for e in history]


def _arrow(values) -> str:
    return " → ".join(f"{v:.2f}" for v in values)


def stall_facts(histories: list[list[dict]], pub: PublishedRun | None, seeds: list[int]) -> list[str]:
    stalls = [stalled_epochs(_accs(h)) for h in histories]
    facts = []
    if any(stalls):
        facts.append("epochs at chance level at the start (test accuracy below "
                     f"{CHANCE_ACC:.0f}%) in our runs: " + ", ".join(f"seed {s}: {k}" for s, k in zip(seeds, stalls)))
    if pub is not None:
        k = stalled_epochs(_accs(pub.log))
        if k:
            facts.append(f"the published log {'also ' if any(stalls) else ''}sits at chance for its first "
                         f"{plural(k, 'epoch')}: "
                         + ", ".join(f"{e['test_acc']:.2f}%" for e in pub.log[:k]) + " (test loss "
                         + ", ".join(f"{e['test_loss']:.4f}" for e in pub.log[:k]) + ")")
        elif any(stalls):
            facts.append(f"the published log starts learning at once: epoch 1 at {pub.log[0]['test_acc']:.2f}%")
    return facts


def path_sentence(name: str, inputs: ReportInputs) -> str:
    if name not in inputs.published_path:
        why = (published_path_note(inputs.params, name) if name in inputs.params.published_path.variants
               else "not in `published_path.variants`")
        return (f"the published data path is not rerun for `{name}` ({why}): these files cannot tell whether our "
                "code or the published run is off")
    diff = same_seed_difference(inputs.runs[name], inputs.published_path[name], "best_test_acc")
    if diff is None:
        return "the published data path has fewer than 2 seeds here: no difference to estimate"
    low, high = diff.ci()
    return (f"our data path − the published data path, mean best test over the same seeds: {diff.diff:+.2f} "
            f"(95% CI [{low:+.2f}, {high:+.2f}]): {diff.equivalence(inputs.params.published_path.margin)}")


def observations(name: str, inputs: ReportInputs) -> list[str]:
    row, runs, histories = inputs.table[name], inputs.runs[name], inputs.histories[name]
    pub, seeds = inputs.reference.get(name), [r["seed"] for r in runs]
    interval = prediction_interval([r["best_test_acc"] for r in runs])
    main, last = histories[0], histories[0][-TREND_EPOCHS:]
    published_last = [e["test_acc"] for e in pub.log[-TREND_EPOCHS:]]
    lowest, pub_lowest = min(main, key=lambda h: h["test_loss"]), min(pub.log, key=lambda e: e["test_loss"])
    swing, pub_swing = largest_swing(_accs(main)), largest_swing(_accs(pub.log))
    facts = [
        f"published best test {pub.log_best:.2f}; our {plural(len(runs), 'seed')}: mean {interval.mean:.2f}, "
        f"interval [{interval.low:.2f}, {interval.high:.2f}] (SD {interval.sd:.3f})",
        *stall_facts(histories, pub, seeds),
        f"test accuracy over the last {len(last)} epochs: ours (seed {seeds[0]}) {_arrow(_accs(last))} "
        f"({trend(_accs(last))}); published {_arrow(published_last)} ({trend(published_last)})",
        f"largest epoch-to-epoch change over the last {SWING_EPOCHS} epochs: ours (seed {seeds[0]}) {swing:.2f}, "
        f"published {pub_swing:.2f} points, against the interval's ±{interval.half_width:.2f}",
        f"lowest test loss: ours (seed {seeds[0]}) {lowest['test_loss']:.4f} at epoch {lowest['epoch']}, published "
        f"{pub_lowest['test_loss']:.4f} at epoch {pub_lowest['epoch']}",
        path_sentence(name, inputs),
    ]
    if runs[0]["params"] != pub.params:
        facts.append(f"parameter count {runs[0]['params']:,} differs from the published {pub.params:,}")
    return [f"**{name}**: the published best test is {row['best']['v']} our interval", "",
            *[f"- {f}" for f in facts], ""]


def outside_section(inputs: ReportInputs) -> list[str]:
    outside = [name for name, row in inputs.table.items() if row["best"]["v"] in ("above", "below")]
    if not outside:
        return ["Every published best test accuracy with a verdict is consistent with our interval."]
    lines = ["Facts from the per-epoch histories and the published logs, for each variant whose published best "
             "test falls outside our interval.", ""]
    for name in outside:
        lines += observations(name, inputs)
    return lines


def gap_section(inputs: ReportInputs) -> list[str]:
    rows = []
    for name, histories in inputs.histories.items():
        pub = inputs.reference.get(name)
        gap = largest_gap(mean_curve(histories), pub.log) if pub else None
        if not histories:
            rows.append([name, 0, "–", inputs.how_to_run(name), "–", "–"])
            continue
        rows.append([name, len(histories)] + (["–"] * 4 if gap is None else
                                               [gap.epoch, f"{gap.ours:.2f}", f"{gap.published:.2f}",
                                                f"{gap.difference:+.2f}"]))
    return [f"Largest difference, after epoch {GAP_AFTER_EPOCH}, between our per-epoch test accuracy "
            "(mean over our seeds) and the published log's:", "",
            markdown_table(["Variant", "Seeds", "Epoch", "Ours (mean)", "Published", "Ours − published"], rows,
                           numeric={1, 2, 3, 4, 5})]
