"""The report's exploratory section: across the variants, where the published run lies against our mean.

Found after looking at the table (issue 29): the published final-epoch test accuracy lay above our
mean in every variant. The section tests that pattern (a sign test and two pooled estimates,
stats.sign_test and stats.pooled_shift), labelled as found after looking, and lists what the
repository can and cannot test about it.
"""

from __future__ import annotations

from .markdown import markdown_table, pct, signed
from ..compare.stats import LEVEL, MIN_RUNS, describe, pooled_shift, sign_test
from ..compare.table import METRICS, published_values
from .inputs import ReportInputs

LABEL = {"fin": "final test", "best": "best test"}


def _differences(inputs: ReportInputs, metric: str) -> list[tuple]:
    """(variant, n, our mean, our SD, published, published − mean, variance of that difference) per
    variant with a published value and at least MIN_RUNS runs of ours."""
    key = METRICS[metric][0]
    published = published_values(inputs.reference, inputs.params, metric)
    rows = []
    for name, runs in inputs.ran.items():
        if name not in published or len(runs) < MIN_RUNS:
            continue
        d = describe([r[key] for r in runs])
        # the published run as one more run of a process with our spread: Var(published − mean) = SD² (1 + 1/n)
        rows.append((name, d["n"], d["mean"], d["sd"], published[name], published[name] - d["mean"],
                     d["sd"] ** 2 * (1 + 1 / d["n"])))
    return rows


def _test_sentence(rows: list[tuple], metric: str, note: str = "") -> str:
    diffs = [r[5] for r in rows]
    sign = sign_test(diffs)
    text = (f"{LABEL[metric]}: the published value lies above our mean in {sign['above']} of {len(rows)} variants "
            f"(below in {sign['below']}); two-sided sign test p = {sign['p']:.3f}")
    usable = [r for r in rows if r[6] > 0]
    if len(usable) < 2:
        return text + note + "."
    pooled = pooled_shift([r[5] for r in usable], [r[6] for r in usable], LEVEL)
    plain, weighted = pooled["mean"], pooled["weighted"]
    return (text + f"; mean of the differences (published − ours) {signed(plain['mean'])}, {LEVEL:.0%} t interval "
            f"over the {len(usable)} variants [{signed(plain['low'])}, {signed(plain['high'])}]; pooled with "
            f"weights 1 / (SD² · (1 + 1/n)) {signed(weighted['mean'])}, {LEVEL:.0%} CI "
            f"[{signed(weighted['low'])}, {signed(weighted['high'])}]{note}.")


def _path_means(inputs: ReportInputs, key: str) -> dict:
    """variant -> mean of its published-path reruns' key, where there are any."""
    return {name: sum(c["metrics"][key] for c in published_path_runs) / len(published_path_runs)
            for name, published_path_runs in inputs.published_path.items() if published_path_runs}


def across_section(inputs: ReportInputs) -> list[str]:
    rows = _differences(inputs, "fin")
    if not rows:
        return [f"No variant has a published value and {MIN_RUNS} runs of ours yet."]
    lines = ["**Exploratory, found after looking.** The pattern tested here, published runs above our mean across "
             "variants, was noticed in the table once the runs had been read, not planned: the test below is of a "
             "hypothesis the same numbers suggested, so its p-value overstates the evidence. Each published number is one run; ours is the mean of our seeds. If the "
             "published runs were ordinary runs of the same process, each would lie above or below our mean with "
             "equal chance, independently across variants.", ""]
    lines += [f"- {_test_sentence(rows, 'fin')}"]
    best = _differences(inputs, "best")
    if best:
        note = " (for comparison: the best epoch is chosen on the test set on both sides)"
        lines += [f"- {_test_sentence(best, 'best', note)}"]
    paths = _path_means(inputs, METRICS["fin"][0])
    table = [[name, n, pct(mean), f"{sd:.3f}", pct(pub), signed(diff),
              pct(paths.get(name)), signed(None if name not in paths else pub - paths[name])]
             for name, n, mean, sd, pub, diff, _ in rows]
    lines += ["", markdown_table(["Variant", "n", "Our mean final", "SD", "Published final", "Published − ours",
                                  "Published path mean final", "Published − published path"], table,
                                 numeric={1, 2, 3, 4, 5, 6, 7}), ""]
    above_path = [name for name, *_r in rows if name in paths and _r[3] > paths[name]]
    mostly_above = sign_test([r[5] for r in rows])["above"] > len(rows) / 2
    lines += ["What the repository can test:", "",
              "- **The data path.** The notebooks fed their models through a DataLoader with per-image PIL "
              "transforms; ours are batched tensors. `published_path.variants` are rerun here on the notebooks' "
              + (f"data path (the last two columns): the published final lies above that path's mean too in "
                 f"{len(above_path)} of {len(paths)} of them, so where it does, our data path does not explain the "
                 "gap (the section \"Our data path against the published data path\" tests the difference)."
                 if paths else "data path; none of these variants has such reruns here yet."),
              "- **Our machine's thread count.** torch's CPU sums depend on the thread count "
              "(docs/reproducibility.md); rerunning seeds with another `train.cpu_threads` would show whether our "
              "means move with it. Not run for this report.", "",
              "What it cannot test:", "",
              "- **Hardware and torch version.** The notebooks ran on a CUDA GPU (`reference/published.json`, "
              "`log_source`) with their own torch and cuDNN; ours ran on the CPU recorded in the run files. No run "
              "here reproduces their arithmetic.",
              "- **The notebooks keeping one run.** Each published number is one run, and nothing records whether "
              "it was the first run or one kept from several. Keeping a good run would put published values above a "
              f"typical run's in most variants{', as here' if mostly_above else ''}; the repository has no way to see "
              "the runs not kept.",
              "- **The published code as it ran.** The notebooks' outputs are logs; their exact environment (library "
              "versions, data loader workers' random streams) is not recoverable from them."]
    return lines
