"""The reproduction report: metrics/report.md and its figures, rendered from files.

Rendering only. The side-by-side numbers and verdicts are the compare stage's table
(metrics/table, what `dvc metrics show --md` prints), the statistics come from
stats.py, the published numbers and per-epoch logs from reference/published.json,
and the machine from the run files, so the report describes where the runs ran,
not where it is rendered. Nothing is typed by hand and nothing depends on the date,
so the same inputs give the same report.

A variant not run yet (no main run file; inputs.read_runs) stays in every table,
marked with the stage that runs it; totals count only the runs that exist. The same
stage writes each variant's per-epoch curve as JSON for `dvc plots` (write_curves).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .config import Params, VariantConfig, load_params
from .data import load_split
from .figures import comparison_figure, misclassified_figure, overlay_figure
from .errors import InputFileError
from .run_files import (read_errors, read_histories, read_published_path, read_runs, read_searches,
                     seed_stage)
from .files import write_json, write_text
from .precision import precision_section, read_precision_runs
from .models import build_model, count_parameters
from .receptive_field import layer_table
from .reference import PublishedRun, Reference, load_reference
from .stats import (BAND_SIGMAS, CHANCE_ACC, GAP_AFTER_EPOCH, SWING_EPOCHS, TREND_EPOCHS, attribute, band,
                    binomial_se, largest_gap, largest_swing, mean_curve, plot_curve, seed_summary, stalled_epochs,
                    trend)
from .table import read_table

MISCLASSIFIED_SHOWN = 25
MACHINE_KEYS = ("device_name", "device", "num_processes", "num_machines", "mixed_precision", "torch")


@dataclass
class ReportInputs:
    params: Params
    reference: Reference
    table: dict      # variant -> its comparison-table row (table.table_row)
    runs: dict       # variant -> its configured runs' summaries, train.seed first; [] if not run yet
    histories: dict  # variant -> per-seed histories, in the order of runs
    code: dict       # variant -> {"metrics", "history"} of the published-path rerun; absent if not run
    errors: dict | None  # the last variant's misclassified test images; None if it is not run yet
    precision: list  # per precision seed: its mixed-precision and fp32 runs (precision.read_precision_runs)
    searches: dict = field(default_factory=dict)  # variant -> its design search's record (inputs.read_searches)

    @property
    def final_variant(self) -> VariantConfig:
        """The drill-down's last step; its misclassified digits are shown."""
        return list(self.params.variants.values())[-1]

    @property
    def ran(self) -> dict:
        """variant -> its runs, for the variants that have any."""
        return {name: runs for name, runs in self.runs.items() if runs}

    @property
    def not_run(self) -> list[str]:
        return [name for name, runs in self.runs.items() if not runs]

    def how_to_run(self, name: str) -> str:
        """What a table shows in place of a variant's numbers while it is not run."""
        return f"not run yet: `dvc repro {seed_stage(self.params, name, self.params.train.seed)}`"


def load_inputs(*, params_path, reference_path, table_dir, runs_dir, history_dir, code_dir,
                errors_dir, precision_dir, search_dir=None) -> ReportInputs:
    params = load_params(params_path)
    runs = read_runs(params, runs_dir)
    return ReportInputs(params=params, reference=load_reference(reference_path),
                        table=read_table(params, table_dir, runs),
                        runs=runs, histories=read_histories(params, history_dir, runs),
                        code=read_published_path(params, code_dir),
                        errors=read_errors(params, errors_dir, list(params.variants)[-1], runs),
                        precision=read_precision_runs(params, precision_dir, runs_dir),
                        searches=read_searches(params, search_dir) if search_dir else {})


# --- markdown helpers -------------------------------------------------------------------

def _cell(value) -> str:
    return "–" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    """numeric: column indices to right-align."""
    align = ["---:" if i in numeric else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}"


def _pair(ours, published, fmt=str) -> str:
    return " / ".join("–" if v is None else fmt(v) for v in (ours, published))


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{seconds / 60:.1f} min"


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


def _link(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target, start)).as_posix()


def describe_machine(run: dict) -> str:
    """Where a run ran, as its run file records it."""
    return (f"{run['device_name']} ({run['device']}), {_plural(run['num_processes'], 'process', 'processes')} "
            f"on {_plural(run['num_machines'], 'machine')}, mixed precision {run['mixed_precision']}, "
            f"torch {run['torch']}")


# --- sections -------------------------------------------------------------------------------

def runs_section(inputs: ReportInputs) -> list[str]:
    machines: dict[str, list[str]] = {}
    for name, runs in inputs.ran.items():
        for run in runs:
            machines.setdefault(describe_machine(run), []).append(f"{name} seed {run['seed']}")
    shapes = {(r["epochs"], r["train_images"], r["test_images"]) for runs in inputs.ran.values() for r in runs}
    variants = (f"{len(inputs.ran)} of {len(inputs.runs)} variants run ({len(inputs.not_run)} not run yet)"
                if inputs.not_run else f"{len(inputs.runs)} variants")
    lines = [f"- {variants}, {_plural(sum(len(r) for r in inputs.ran.values()), 'run')}; "
             + "; ".join(f"{e} epochs on {tr:,} training and {te:,} test images" for e, tr, te in sorted(shapes))]
    if len(machines) == 1:
        lines.append(f"- Every run on: {next(iter(machines))}")
    else:
        lines += [f"- On {machine}: {', '.join(runs)}" for machine, runs in machines.items()]
    return lines


def steps_section(params: Params, reference: Reference) -> list[str]:
    def notebook(name: str) -> str:
        pub = reference.get(name)
        return f" ([published notebook]({pub.notebook}))" if pub and pub.notebook else ""

    return [f"{i}. `{v.name}`: {v.target}{notebook(v.name)}" for i, v in enumerate(params.variants.values(), 1)]


def side_by_side(inputs: ReportInputs) -> str:
    headers = ["Variant", "Params: ours / published", "Best train: ours / published",
               "Best test: published run", "published code here", f"ours (seed {inputs.params.train.seed})",
               "ours: mean ± SD over n seeds", "Band (±)", "Verdict: published is",
               "Best-test epoch: ours / published", "Final test: ours / published"]
    rows = []
    for name, row in inputs.table.items():
        seeds = row["seeds"]
        rows.append([
            name, _pair(row["params"]["ours"], row["params"]["published"], lambda v: f"{v:,}"),
            _pair(row["best_train"]["ours"], row["best_train"]["published"], _pct),
            _pct(row["best_test"]["published"]),
            # no published run, no published code to rerun: "–", not "not run"
            _pct(row["best_test"]["published_path"]) or ("not run" if row["best_test"]["published"] else None),
            _pct(row["best_test"]["ours"]) if seeds["n"] else inputs.how_to_run(name),
            "– (n = 0)" if not seeds["n"] else f"{seeds['best_test_mean']:.2f} (n = 1)" if seeds["n"] == 1
            else f"{seeds['best_test_mean']:.2f} ± {seeds['best_test_sd']:.3f} (n = {seeds['n']})",
            None if row["verdict"]["band"] is None else f"±{row['verdict']['band']:.2f}", row["verdict"]["published"],
            _pair(row["best_test_epoch"]["ours"], row["best_test_epoch"]["published"]),
            _pair(row["final_test"]["ours"], row["final_test"]["published"], _pct)])
    return markdown_table(headers, rows, numeric={3, 4, 5, 7})


def verdict_rule(inputs: ReportInputs) -> list[str]:
    ses = [binomial_se(inputs.reference.get(name).best_test, runs[0]["test_images"])
           for name, runs in inputs.ran.items() if inputs.reference.get(name)]
    images = sorted({runs[0]["test_images"] for runs in inputs.ran.values()})
    ns = sorted({len(runs) for runs in inputs.ran.values()})
    lines = [
        "Each published number is one run; ours are n seeds of the same recipe (n in the table). For each variant:",
        "",
        f"    band = mean ± {BAND_SIGMAS} · sqrt(sd² + se²)",
        "",
        "- mean, sd: mean and sample standard deviation (ddof 1) of our seeds' best test accuracy; sd = 0 "
        f"with one seed, where the band is ±{BAND_SIGMAS}·se (here n = {', '.join(map(str, ns))} seeds);",
        f"- se = sqrt(p(1 − p)/N): the binomial standard error of the published best test accuracy p measured on "
        f"N = {', '.join(f'{n:,}' for n in images)} test images (our count)"
        + (f", {min(ses):.3f} to {max(ses):.3f} points across the variants" if ses else "") + ".",
        "",
        "Verdict: the published best test accuracy is *within* the band (ends included), *above* it or *below* it. "
        "Both best-test numbers are the highest of the per-epoch test evaluations: the test set chose the epoch, an "
        "optimistic selection made the same way on both sides; the final-epoch column has no selection.",
    ]
    return lines


def seeds_section(inputs: ReportInputs) -> list[str]:
    target = inputs.reference.target_acc

    def spread(d: dict) -> str:
        if d["n"] == 1:
            return f"{d['mean']:.2f} (one seed)"
        return f"{d['mean']:.2f} ± {d['sd']:.3f} ({d['min']:.2f} to {d['max']:.2f})"

    rows = []
    for name, runs in inputs.runs.items():
        if not runs:
            rows.append([name, 0, inputs.how_to_run(name), "–", "–", "–", "–"])
            continue
        s = seed_summary(runs)
        rows.append([name, s["n"], ", ".join(str(r["seed"]) for r in runs), spread(s["best_test"]),
                     spread(s["final_test"]), spread(s["best_train"]),
                     f"{sum(r['final_test_acc'] >= target for r in runs)} of {s['n']}"])
    return ["Every run of each variant: mean ± sample SD (min to max); a single seed has no SD.", "",
            markdown_table(["Variant", "n", "Seeds", "Best test", "Final test", "Best train",
                            f"Final test ≥ {target:.2f}%"], rows, numeric={1})]


def disagreements(reference: Reference, params: Params) -> list[str]:
    """Where the published table differs from its own notebook's log."""
    facts = []
    for name in params.variants:
        pub = reference.get(name)
        if pub is None:
            continue
        best = pub.log_best_test
        if pub.best_test != best["test_acc"]:
            final = " (the log's final epoch)" if pub.best_test == pub.log_final_test else ""
            facts.append(f"- `{name}`: table best test {pub.best_test:.2f}{final}; its log's best is "
                         f"{best['test_acc']:.2f} at epoch {best['epoch']}")
        if pub.best_train != pub.log_best_train:
            facts.append(f"- `{name}`: table best train {pub.best_train:.2f}; its log's best (the running accuracy "
                         f"of each epoch's last batch) is {pub.log_best_train:.2f}")
    return facts or ["- none: every table value equals the best of its log"]


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
                         f"{_plural(k, 'epoch')}: "
                         + ", ".join(f"{e['test_acc']:.2f}%" for e in pub.log[:k]) + " (test loss "
                         + ", ".join(f"{e['test_loss']:.4f}" for e in pub.log[:k]) + ")")
        elif any(stalls):
            facts.append(f"the published log starts learning at once: epoch 1 at {pub.log[0]['test_acc']:.2f}%")
    return facts


def observations(name: str, inputs: ReportInputs) -> list[str]:
    row, runs, histories = inputs.table[name], inputs.runs[name], inputs.histories[name]
    pub, seeds = inputs.reference.get(name), [r["seed"] for r in runs]
    noise = band([r["best_test_acc"] for r in runs], pub.best_test, runs[0]["test_images"])
    main = histories[0]
    last = main[-TREND_EPOCHS:]
    published_last = [e["test_acc"] for e in pub.log[-TREND_EPOCHS:]]
    lowest = min(main, key=lambda h: h["test_loss"])
    pub_lowest = min(pub.log, key=lambda e: e["test_loss"])
    swing, pub_swing = largest_swing(_accs(main)), largest_swing(_accs(pub.log))
    final = main[-1]
    facts = [
        f"published best test {pub.best_test:.2f}; our {_plural(len(runs), 'seed')}: mean {noise.mean:.2f}, "
        f"min {min(r['best_test_acc'] for r in runs):.2f}, max {max(r['best_test_acc'] for r in runs):.2f}; "
        f"band ±{noise.half_width:.2f} (sd {noise.sd:.3f}, se {noise.se:.3f})",
        *stall_facts(histories, pub, seeds),
        f"test accuracy over the last {len(last)} epochs: ours (seed {seeds[0]}) {_arrow(_accs(last))} "
        f"({trend(_accs(last))}); published {_arrow(published_last)} ({trend(published_last)})",
        f"largest epoch-to-epoch change over the last {SWING_EPOCHS} epochs: ours (seed {seeds[0]}) {swing:.2f}, "
        f"published {pub_swing:.2f} points, against the band's ±{noise.half_width:.2f}"
        + (": which epoch happens to be best can alone move a best-of-epochs number by that much"
           if max(swing, pub_swing) > noise.half_width else ""),
        f"lowest test loss: ours (seed {seeds[0]}) {lowest['test_loss']:.4f} at epoch {lowest['epoch']}, published "
        f"{pub_lowest['test_loss']:.4f} at epoch {pub_lowest['epoch']}",
        f"final epoch of ours (seed {seeds[0]}): train {final['train_acc']:.2f}%, test {final['test_acc']:.2f}% "
        "(train accuracy on the training batches in train mode, as published)",
    ]
    if row["params"]["ours"] != row["params"]["published"]:
        facts.append(f"parameter count {row['params']['ours']:,} differs from the published "
                     f"{row['params']['published']:,}")
    return [f"**{name}**: the published best test is {row['verdict']['published']} our band", "",
            *[f"- {f}" for f in facts], f"- {attribution_sentence(name, inputs, noise, pub)}", ""]


def attribution_sentence(name: str, inputs: ReportInputs, noise, pub: PublishedRun) -> str:
    if name not in inputs.code:
        return (f"the published code was not rerun here for `{name}` (params.yaml `published_path.variants`): these "
                "files cannot tell whether our code or the published run is off")
    code = inputs.code[name]["metrics"]["best_test_acc"]
    a = attribute(noise, pub.best_test, code)
    said = (f"the published code rerun here reaches {code:.2f}: "
            f"{'outside' if a.ours_vs_code else 'within'} ±{noise.half_width:.2f} of our mean {noise.mean:.2f}, "
            f"{'outside' if a.published_vs_code else 'within'} ±{noise.half_width:.2f} of the published "
            f"{pub.best_test:.2f}")
    if a.cause == "undecided":
        return said + ("; it sides with neither, so these files do not tell which is off" if a.ours_vs_code
                       else "; it is close to both, so these files do not tell which is off")
    return f"{said}: **{a.cause}**"


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
            "(mean over our seeds) and the published log's:",
            "",
            markdown_table(["Variant", "Seeds", "Epoch", "Ours (mean)", "Published", "Ours − published"], rows,
                           numeric={1, 2, 3, 4, 5})]


def wall_time_section(inputs: ReportInputs) -> list[str]:
    machines = {describe_machine(r) for runs in inputs.ran.values() for r in runs}
    rows = []
    for name, runs in inputs.runs.items():
        seconds = [r["wall_seconds"] for r in runs]
        rows.append([name, len(runs), _duration(seconds[0]), _duration(sum(seconds) / len(seconds)),
                     _duration(sum(seconds))] if runs else [name, 0, inputs.how_to_run(name), "–", "–"])
        if len(machines) > 1:
            rows[-1].append(describe_machine(runs[0]) if runs else "–")
    total = sum(r["wall_seconds"] for runs in inputs.ran.values() for r in runs)
    where = f" All on {next(iter(machines))}." if len(machines) == 1 else ""
    # A variant not run yet would make the total look like the whole drill-down's cost.
    unrun = f" ({len(inputs.not_run)} not run yet)" if inputs.not_run else ""
    return [f"Training wall time as each run file records it (`wall_seconds`).{where} "
            f"In total {_duration(total)} over {_plural(sum(map(len, inputs.ran.values())), 'run')} of "
            f"{_plural(len(inputs.ran), 'variant')}{unrun}. "
            "Speed comparisons are the benchmark stage's (`metrics/benchmark.json`).",
            "",
            markdown_table(["Variant", "Runs", f"Seed {inputs.params.train.seed}", "Mean per run", "Total"]
                           + ([f"Machine (seed {inputs.params.train.seed})"] if len(machines) > 1 else []),
                           rows, numeric={1, 2, 3, 4})]


def model_cards(params: Params) -> list[str]:
    groups: dict[str, list[VariantConfig]] = {}
    for v in params.variants.values():
        groups.setdefault(v.model, []).append(v)
    headers = ["#", "Layer", "In ch", "Out ch", "k", "s", "p", "n in", "n out", "j in", "j out",
               "RF in", "RF out", "Output (C×H×W)", "Params"]
    lines = [
        "Computed from the models in `src/mnist_repro/models.py` (one dummy forward pass for the shapes) with "
        "n_out = ⌊(n_in + 2p − k)/s⌋ + 1, j_out = j_in·s, r_out = r_in + (k − 1)·j_in, from n = 28, j = 1, r = 1. "
        "A conv row's parameters include the block's BatchNorm. A 1×1 convolution never grows the receptive "
        "field; the published README's table, which grows it, has slips.",
        "",
    ]
    for model_name, variants in groups.items():
        model = build_model(model_name, variants[0].dropout)
        rows = layer_table(model)
        body = [[i + 1, r.layer, r.c_in, r.c_out, r.kernel, r.stride, r.padding, r.n_in, r.n_out, r.j_in,
                 r.j_out, r.r_in, r.r_out, "×".join(map(str, r.output_shape)), f"{r.params:,}"]
                for i, r in enumerate(rows)]
        lines += [
            f"### `{model_name}` (variant{'s' if len(variants) > 1 else ''}: "
            f"{', '.join(v.name for v in variants)})",
            "",
            markdown_table(headers, body, numeric=set(range(2, 13)) | {14}),
            "",
            f"Parameters: {sum(r.params for r in rows):,} (the model's count: {count_parameters(model):,}); "
            f"receptive field of the last layer: {rows[-1].r_out}×{rows[-1].r_out} pixels.",
            "",
        ]
    return lines


# --- figures ----------------------------------------------------------------------------------

# Overrides every experiment of a search shares by construction; the tables leave them out.
SEARCH_FIXED = ("train.holdout", "train.cpu_threads")


def search_section(name: str, record: dict, params: Params) -> list[str]:
    """What a design search tried, what each candidate scored on its validation split, and
    which candidate params.yaml's entry for the variant is (its recipe, compared key by key)."""
    exps = record["experiments"]
    recipe = {k: getattr(params.variants[name], k) for k in record["candidates"][0]["recipe"]}
    # the first match: a recipe scored on several splits is chosen on the largest, ranked first
    chosen = next((i for i, c in enumerate(record["candidates"]) if c["recipe"] == recipe), None)
    trained = " or ".join(f"{n:,}" for n in sorted({e["train_images"] for e in exps}))
    held = " or ".join(f"{n:,}" for n in sorted({e["validation_images"] for e in exps}))
    lines = [f"{len(exps)} experiments of `train@{name}`, each trained on {trained} "
             f"training images and scored on the last {held} (`train.holdout`), "
             f"never on the test set. Rule: {record['rule']}. "
             + (f"`params.yaml` has candidate {chosen + 1}." if chosen is not None else
                "`params.yaml`'s entry matches no candidate: rerun the search or set one of them."),
             ""]
    rows = []
    for i, c in enumerate(record["candidates"], 1):
        changed = ", ".join(f"`{k.removeprefix(f'variants.{name}.')}={v}`" for k, v in c["overrides"].items()
                            if k not in SEARCH_FIXED) or "(the baseline's entry)"
        rank = f"{i}{' (chosen)' if i - 1 == chosen else ''}" if c.get("within_budget", True) else "reference"
        rows.append([rank, c["model"], f"{c['params']:,}", changed, f"{c['validation_images']:,}",
                     ", ".join(map(str, c["seeds"])), f"{c['final_val_mean']:.3f}", f"{c['final_val_min']:.2f}"])
    lines += [markdown_table(["Rank", "Model", "Params", "Overrides", "Val. images", "Seeds", "Final val. mean",
                              "Final val. min"], rows, numeric={2, 4, 6, 7}), ""]
    lines += ["Every experiment (final and best validation accuracy, best epoch), with the command that ran it "
              "on its baseline commit:", ""]
    lines += [markdown_table(["Experiment", "Baseline", "Final val.", "Best val. (epoch)", "Command"],
                             [[e["experiment"], e["baseline"], f"{e['final_val_acc']:.2f}",
                               f"{e['best_val_acc']:.2f} ({e['best_val_epoch']})", f"`{e['command']}`"]
                              for e in exps], numeric={2})]
    return lines


def _pairs(history) -> list[tuple]:
    return [(e["epoch"], e["test_acc"]) for e in history]


def write_misclassified(inputs: ReportInputs, data_root, path: Path) -> Path:
    """The first MISCLASSIFIED_SHOWN of the errors file, drawn from the test images themselves."""
    errors, name = inputs.errors, inputs.final_variant.name
    shown = errors["misclassified"][:MISCLASSIFIED_SHOWN]
    images, labels = load_split(data_root, train=False)
    for e in shown:
        # A label that disagrees with the test set means the file indexes something else (a holdout, a stale set).
        if not 0 <= e["index"] < len(labels) or int(labels[e["index"]]) != e["label"]:
            raise InputFileError(f"misclassified images of {name}: test image #{e['index']} is not a {e['label']} in "
                                 f"{data_root}; rerun `dvc repro train@{name}`")
    idx = [e["index"] for e in shown]
    return misclassified_figure(images[idx].numpy(), [e["label"] for e in shown], [e["predicted"] for e in shown],
                                idx, path, f"{name}: first {len(shown)} of {len(errors['misclassified']):,} "
                                           "misclassified test images", limit=MISCLASSIFIED_SHOWN)


def write_figures(inputs: ReportInputs, figures_dir: Path, data_root) -> dict[str, Path]:
    """Figure key (a variant's name, "overlay", "misclassified") -> path. A variant not run yet gets
    the published curves alone (none without a published entry); the overlay shows the variants run."""
    target = inputs.reference.target_acc
    figures = {}
    for name, histories in inputs.histories.items():
        pub = inputs.reference.get(name)
        code = inputs.code.get(name)
        if not histories and not pub:
            continue
        title = (f"{name}: test accuracy per epoch of our seeds (no published run)" if not pub
                 else f"{name}: test accuracy per epoch, ours against the published run" if histories
                 else f"{name}: test accuracy per epoch of the published run (ours not run yet)")
        figures[name] = comparison_figure(
            title, mean_curve(histories), len(histories), _pairs(pub.log) if pub else None,
            _pairs(code["history"]) if code else None, figures_dir / f"{name}_vs_published.png", target)
    curves = {name: [(c["epoch"], c["mean"]) for c in mean_curve(h)] for name, h in inputs.histories.items() if h}
    if curves:
        figures["overlay"] = overlay_figure(curves, figures_dir / "test_accuracy_overlay.png", target)
    if inputs.errors is not None and inputs.errors.get("evaluated_on", "test") == "test":
        figures["misclassified"] = write_misclassified(
            inputs, data_root, figures_dir / f"misclassified_{inputs.final_variant.name}.png")
    return figures


def write_curves(inputs: ReportInputs, curves_dir: Path) -> dict[str, Path]:
    """variant -> <curves_dir>/<variant>.json, its stats.plot_curve, for `dvc plots`."""
    curves = {}
    for name, histories in inputs.histories.items():
        pub, code = inputs.reference.get(name), inputs.code.get(name)
        curves[name] = curves_dir / f"{name}.json"
        write_json(curves[name], plot_curve(mean_curve(histories), pub.log if pub else None,
                                            code["history"] if code else None))
    return curves


def remove_stale(directory: Path, pattern: str, written) -> None:
    """Delete what an earlier report left in directory and this one did not write (a removed variant's file)."""
    for stale in set(directory.glob(pattern)) - set(written):
        stale.unlink()


# --- the whole report --------------------------------------------------------------------------

def misclassified_section(inputs: ReportInputs, link: dict) -> list[str]:
    errors, name = inputs.errors, inputs.final_variant.name
    if errors is None:
        return [f"`{name}` is {inputs.how_to_run(name)}; its misclassified test images are shown once it has run."]
    if "misclassified" not in link:
        return [f"`{name}` was evaluated on {errors.get('evaluated_on')}, not the test set: no test digits to show."]
    wrong, total = len(errors["misclassified"]), errors["test_images"]
    final = inputs.runs[name][0]["final_test_acc"]
    return [f"`{name}` (seed {errors['seed']}), after its last epoch, misclassifies {wrong:,} of {total:,} test "
            f"images, an accuracy of {100 * (total - wrong) / total:.2f}% (final test accuracy in its run file: "
            f"{final:.2f}%). "
            f"The first {min(wrong, MISCLASSIFIED_SHOWN)} in test-set order:",
            "", f"![misclassified test images of {name}]({link['misclassified']})"]


def render_report(inputs: ReportInputs, figures: dict[str, Path], report_dir: Path, sources: dict[str, Path]) -> str:
    link = {key: _link(path, report_dir) for key, path in figures.items()}
    # Shown as paths from the project root (the report's parent directory in dvc.yaml's layout),
    # linked relative to the report.
    src = {key: f"[{_link(path, report_dir.parent)}]({_link(path, report_dir)})" for key, path in sources.items()}
    outside = [name for name, row in inputs.table.items() if row["verdict"]["published"] in ("above", "below")]
    no_verdict = [name for name, row in inputs.table.items() if row["verdict"]["published"] is None]
    lines = [
        f"# Reproduction report: {len(inputs.table)} variants against the published drill-down",
        "",
        f"Rendered by `stages/report.py` from `params.yaml`, the published table and logs in "
        f"{src['reference']}, the comparison table in {src['table']} "
        f"(`dvc repro compare`; `dvc metrics show --md` prints it) and the run files in {src['runs']}. "
        "No number here is typed by hand.",
        "",
    ]
    if inputs.not_run:
        lines += [f"**{len(inputs.not_run)} of {len(inputs.runs)} variants not run yet**: "
                  + ", ".join(f"`{n}` (`dvc repro {seed_stage(inputs.params, n, inputs.params.train.seed)}`)"
                              for n in inputs.not_run)
                  + ". Every table lists them as not run, with their published numbers; totals count only the "
                  "runs that exist.", ""]
    lines += [
        "## The runs",
        "",
        *runs_section(inputs),
        "",
        "The drill-down, one step per variant:",
        "",
        *steps_section(inputs.params, inputs.reference),
        "",
        "## Side by side",
        "",
        side_by_side(inputs),
        "",
        "*Published*: the write-up's table for params, best train and best test; its notebook's log for the "
        "best-test epoch and the final test. *Published code here*: the notebooks' data path (DataLoader + PIL "
        f"transforms) rerun on this pipeline with seed {inputs.params.train.seed}. *Ours*: seed "
        f"{inputs.params.train.seed}, like the published single run, with the mean over all our seeds beside it.",
        "",
        "### The verdict rule",
        "",
        *verdict_rule(inputs),
        "",
    ]
    if no_verdict:
        lines += [f"No verdict for {', '.join(f'`{n}`' for n in no_verdict)}: no published entry in "
                  f"{src['reference']}, or runs evaluated on a training holdout rather than the test set.", ""]
    lines += [
        "## Seeds",
        "",
        *seeds_section(inputs),
        "",
        *[line for name, record in inputs.searches.items()
          for line in (f"## Design search: {name}", "", *search_section(name, record, inputs.params), "")],
        "## Where the published table and its own logs disagree",
        "",
        *disagreements(inputs.reference, inputs.params),
        "",
        "## Outside the band",
        "",
    ]
    if outside:
        lines += ["Facts from the per-epoch histories and the published logs, for each variant whose published best "
                  "test falls outside our band.", ""]
        for name in outside:
            lines += observations(name, inputs)
    else:
        lines += ["Every published best test accuracy is within our band.", ""]
    lines += ["## Per-epoch gap to the published logs", "", *gap_section(inputs), ""]
    if "overlay" in link:
        lines += [f"![test accuracy of every variant run]({link['overlay']})", ""]
    for name, histories in inputs.histories.items():
        lines += [f"### {name}", ""]
        if not histories:
            lines += [f"`{name}` is {inputs.how_to_run(name)}"
                      + ("; the published run alone:" if name in link else "; no published log either."), ""]
        if name in link:
            published = inputs.reference.get(name) is not None
            against = ("against the published run" if published else "over our seeds") if histories \
                else "of the published run"
            lines += [f"![{name}: test accuracy per epoch {against}]({link[name]})", ""]
    lines += ["## Mixed precision", "", *precision_section(inputs.params, inputs.precision), "",
              "## Wall time", "", *wall_time_section(inputs), "",
              f"## Misclassified test images: {inputs.final_variant.name}", "",
              *misclassified_section(inputs, link), "",
              "## Model cards", "", *model_cards(inputs.params)]
    return "\n".join(lines).rstrip() + "\n"


def build_report(*, params_path, reference_path, table_dir, runs_dir, history_dir, code_dir, errors_dir,
                 precision_dir, data_root, report_path, figures_dir, curves_dir, search_dir=None) -> str:
    """Read every input (any missing one stops it before a file is written), write the figures,
    the curves and the report; return the report's markdown."""
    inputs = load_inputs(params_path=params_path, reference_path=reference_path, table_dir=table_dir,
                         runs_dir=runs_dir, history_dir=history_dir, code_dir=code_dir, errors_dir=errors_dir,
                         precision_dir=precision_dir, search_dir=search_dir)
    report_path, figures_dir, curves_dir = Path(report_path), Path(figures_dir), Path(curves_dir)
    figures = write_figures(inputs, figures_dir, data_root)
    remove_stale(figures_dir, "*.png", figures.values())
    remove_stale(curves_dir, "*.json", write_curves(inputs, curves_dir).values())
    sources = {"reference": Path(reference_path), "table": Path(table_dir), "runs": Path(runs_dir)}
    text = render_report(inputs, figures, report_path.parent, sources)
    write_text(report_path, text)
    return text
