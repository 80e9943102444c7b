"""The side-by-side report: our seven runs against the published table, every number from files.

Nothing here is typed by hand: the published numbers come from params.yaml, ours
from metrics/, the noise band from the test-set size and the seed spread, the
model cards from the models themselves. The README's results block is rendered
by the same function as the report's table, so the two cannot disagree.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import Params, TrainConfig, VariantConfig, load_params
from .consistency import TARGET_ACC, InputFileError, read_input
from .data import load_split
from .figures import curves_figure, misclassified_figure, overlay_figure
from .io import atomic_path, write_text
from .models import build_model, count_parameters
from .receptive_field import layer_table
from .train import prepare_images

BAND_SIGMAS = 2
README_BEGIN = "<!-- results:begin -->"
README_END = "<!-- results:end -->"
MISCLASSIFIED_SHOWN = 25
TREND_EPOCHS = 3
SWING_EPOCHS = 5      # late epochs whose epoch-to-epoch test accuracy changes are compared with the band
CHANCE_ACC = 20.0     # test accuracy (%) below which an epoch has learnt next to nothing (chance is ~10%)


# --- inputs -----------------------------------------------------------------------

@dataclass
class ReportInputs:
    params: Params
    metrics: dict   # variant -> metrics dict (train.summarize), in params order
    histories: dict  # variant -> list of per-epoch dicts
    consistency: dict  # consistency.summarize_seeds output

    @property
    def final_variant(self) -> VariantConfig:
        """The drill-down's last step; its saved weights give the misclassified grid."""
        return list(self.params.variants.values())[-1]


def load_inputs(params: Params, metrics_dir: str | Path, history_dir: str | Path,
                consistency_path: str | Path) -> ReportInputs:
    metrics, histories = {}, {}
    for name in params.variants:
        rerun = f"run `dvc repro train@{name}`"
        m = read_input(Path(metrics_dir) / f"{name}.json", rerun)
        h = read_input(Path(history_dir) / f"{name}.json", rerun)
        if m.get("variant") != name or len(h) != m.get("epochs"):
            raise InputFileError(f"{Path(metrics_dir) / f'{name}.json'}: does not match variant {name!r} "
                                 f"or its {len(h)}-epoch history; {rerun}")
        metrics[name], histories[name] = m, h
    consistency = read_input(Path(consistency_path), "run `dvc repro consistency`")
    if consistency.get("variant") != params.consistency.variant:
        raise InputFileError(f"{consistency_path}: summarises {consistency.get('variant')!r}, params.yaml says "
                             f"consistency.variant is {params.consistency.variant!r}; run `dvc repro consistency`")
    return ReportInputs(params, metrics, histories, consistency)


# --- comparison with the published table --------------------------------------------

def binomial_se(acc_percent: float, n: int) -> float:
    """Standard error, in percentage points, of an accuracy measured on n independent images."""
    p = acc_percent / 100
    return 100 * math.sqrt(p * (1 - p) / n)


def band_half_width(published_acc: float, test_images: int, seed_std: float | None) -> float:
    """BAND_SIGMAS x the larger of the two noise sources; the seed spread may be unknown (one seed)."""
    return BAND_SIGMAS * max(binomial_se(published_acc, test_images), seed_std or 0.0)


def verdict(difference: float, half_width: float) -> str:
    if abs(difference) <= half_width:
        return "within band"
    return "above" if difference > 0 else "below"


@dataclass(frozen=True)
class Comparison:
    variant: VariantConfig
    metrics: dict
    difference: float   # ours best test - published best test, percentage points
    half_width: float   # of the noise band, percentage points
    verdict: str

    @property
    def params_match(self) -> bool:
        return self.metrics["params"] == self.variant.published.params


def compare(inputs: ReportInputs) -> list[Comparison]:
    seed_std = inputs.consistency["best_test_acc"]["std"]
    rows = []
    for name, variant in inputs.params.variants.items():
        m = inputs.metrics[name]
        difference = round(m["best_test_acc"] - variant.published.best_test, 2)
        half = band_half_width(variant.published.best_test, m["test_images"], seed_std)
        rows.append(Comparison(variant, m, difference, half, verdict(difference, half)))
    return rows


# --- markdown ---------------------------------------------------------------------

def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    """numeric: column indices to right-align."""
    align = ["---:" if i in numeric else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(value: float) -> str:
    return f"{value:.2f}"


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{seconds / 60:.1f} min"


def results_table(comparisons: list[Comparison]) -> str:
    headers = ["Variant", "Target", "Params: ours / published", "Best train: ours (published)", "Best test",
               "Best-test epoch", "Final test", "Published best test", "Δ best test", "Verdict (band ±)",
               "Wall time"]
    rows = []
    for c in comparisons:
        m, pub = c.metrics, c.variant.published
        params = f"{m['params']:,} / {pub.params:,}" + ("" if c.params_match else " **mismatch**")
        rows.append([c.variant.name, c.variant.target, params,
                     f"{_pct(m['best_train_acc'])} ({_pct(pub.best_train)})", _pct(m["best_test_acc"]),
                     f"{m['best_test_epoch']} of {m['epochs']}", _pct(m["final_test_acc"]), _pct(pub.best_test),
                     f"{c.difference:+.2f}", f"{c.verdict} (±{c.half_width:.2f})", _duration(m["wall_seconds"])])
    return markdown_table(headers, rows, numeric={4, 5, 6, 7, 8, 10})


def describe_machine() -> str:
    """CPU model, cores, GPU and torch of the machine running the report stage: in a
    `dvc repro` that is the machine that trained (the metrics record device and processes)."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = (f"{torch.cuda.device_count()} × {torch.cuda.get_device_name(0)}" if torch.cuda.is_available()
           else "no GPU")
    return f"{cpu} ({cores} cores), {gpu}, torch {torch.__version__}"


def total_wall_seconds(inputs: ReportInputs) -> float:
    return sum(m["wall_seconds"] for m in inputs.metrics.values())


def run_summary(inputs: ReportInputs) -> str:
    """One line: what ran, where, and how long it took in total."""
    total = total_wall_seconds(inputs)
    return (f"{len(inputs.metrics)} variants × {_uniform_or_listed(inputs, 'epochs')} epochs, seed "
            f"{_uniform_or_listed(inputs, 'seed')}, on {_uniform_or_listed(inputs, 'device')} × "
            f"{_uniform_or_listed(inputs, 'num_processes')} process(es); training wall time "
            f"{_duration(total)} in total (sum of the variants' `wall_seconds`)")


def render_readme_block(inputs: ReportInputs, report_link: str, machine: str, date: str) -> str:
    """What goes between the README markers: the report's table, the run, and where the rest is."""
    return "\n".join([
        "<!-- generated by stages/report.py (`dvc repro report`); edits here are overwritten -->",
        results_table(compare(inputs)),
        "",
        f"Run: {run_summary(inputs)}. Report generated {date} on {machine}.",
        "",
        f"Noise band, consistency over seeds, learning curves and model cards: [{report_link}]({report_link}).",
    ])


def replace_readme_block(readme: str, block: str, source: str = "README.md") -> str:
    lines = readme.splitlines()
    begins = [i for i, line in enumerate(lines) if line.strip() == README_BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == README_END]
    if len(begins) != 1 or len(ends) != 1 or begins[0] > ends[0]:
        raise InputFileError(f"{source}: needs exactly one line `{README_BEGIN}` followed by one line "
                             f"`{README_END}` where the results table goes (found {len(begins)} and {len(ends)})")
    new = lines[:begins[0] + 1] + block.splitlines() + lines[ends[0]:]
    return "\n".join(new) + "\n"


# --- report sections ------------------------------------------------------------------

def _uniform_or_listed(inputs: ReportInputs, key: str, fmt=str) -> str:
    values = {name: m[key] for name, m in inputs.metrics.items()}
    if len(set(values.values())) == 1:
        return fmt(next(iter(values.values())))
    return "varies: " + ", ".join(f"{name} {fmt(v)}" for name, v in values.items())


def run_section(inputs: ReportInputs, machine: str, date: str) -> list[str]:
    total = total_wall_seconds(inputs)
    n = len(inputs.metrics)
    return [
        f"- Generated {date} on {machine} (the machine that ran the report stage)",
        f"- Device: {_uniform_or_listed(inputs, 'device')}; processes: {_uniform_or_listed(inputs, 'num_processes')}"
        f" (as recorded in each variant's metrics file)",
        f"- Seed: {_uniform_or_listed(inputs, 'seed')}; epochs: {_uniform_or_listed(inputs, 'epochs')}; "
        f"training images: {_uniform_or_listed(inputs, 'train_images', lambda v: f'{v:,}')}; "
        f"test images: {_uniform_or_listed(inputs, 'test_images', lambda v: f'{v:,}')}",
        f"- Total training wall time of the {n} variant runs: {_duration(total)} "
        f"(sum of their `wall_seconds`; the consistency seeds are not included)",
    ]


def band_explanation(inputs: ReportInputs, comparisons: list[Comparison]) -> list[str]:
    c = inputs.consistency
    seed_std = c["best_test_acc"]["std"]
    n_images = sorted({m["test_images"] for m in inputs.metrics.values()})
    se_range = sorted(binomial_se(x.variant.published.best_test, x.metrics["test_images"]) for x in comparisons)
    seed_text = (f"the sample standard deviation (ddof 1) of `{c['variant']}`'s best test accuracy over "
                 f"its {c['n']} seeds, {seed_std:.3f} points (see *Consistency*); it was measured on that "
                 f"variant only and is applied to every variant as the best estimate available"
                 if seed_std is not None else
                 f"unknown: `{c['variant']}` was run with one seed only, so the band uses the binomial term alone")
    return [
        "Each published number and each of ours is a single run, so a difference means something only "
        "beyond the noise. Half-width of the band:",
        "",
        f"    half-width = {BAND_SIGMAS} × max(binomial SE, seed SD)",
        "",
        f"- binomial SE = sqrt(p(1 − p)/n), with p the published best test accuracy and n = "
        f"{', '.join(f'{v:,}' for v in n_images)} test images: {se_range[0]:.3f} to {se_range[-1]:.3f} points "
        "across the variants (the sampling error of an accuracy measured on n images);",
        f"- seed SD: {seed_text}.",
        "",
        "Verdict: *within band* if |Δ best test| ≤ half-width, otherwise *above* or *below* the published value.",
        "",
        "The published \"best test\" is the highest of its per-epoch evaluations (one after every epoch) "
        "on the test set itself: the test set chose the epoch, an optimistic "
        "selection. Our *Best test* is selected the same way so that the two compare like for like; the "
        "*Final test* column (last epoch, no selection) is the number to weigh as well.",
    ]


def consistency_section(c: dict) -> list[str]:
    target = c["target_acc"]
    rows = [[s["seed"], _pct(s["best_test_acc"]), _pct(s["final_test_acc"]),
             "yes" if s["final_test_acc"] >= target else "no"] for s in c["seeds"]]
    best, final = c["best_test_acc"], c["final_test_acc"]

    def spread(d):
        std = "n/a (one seed)" if d["std"] is None else f"{d['std']:.3f}"
        return f"{_pct(d['mean'])} ± {std} (min {_pct(d['min'])}, max {_pct(d['max'])})"

    return [
        f"`{c['variant']}` trained with {c['n']} seeds, otherwise identical ({c['epochs']} epochs, "
        f"{c['test_images']:,} test images). Mean ± sample standard deviation.",
        "",
        markdown_table(["Seed", "Best test", "Final test", f"Final ≥ {target:.2f}"], rows, numeric={0, 1, 2}),
        "",
        f"- Best test: {spread(best)}; {c['reached_target_best']} of {c['n']} seeds reach {target:.2f}%",
        f"- Final test: {spread(final)}; {c['reached_target_final']} of {c['n']} seeds reach {target:.2f}%",
    ]


def trend(values: list[float]) -> str:
    steps = [b - a for a, b in zip(values, values[1:])]
    if steps and all(s > 0 for s in steps):
        return "rising each epoch"
    if steps and all(s < 0 for s in steps):
        return "falling each epoch"
    return "not monotonic"


def stalled_epochs(history: list[dict]) -> int:
    """Leading epochs whose test accuracy stayed near chance: training that did not start."""
    n = 0
    while n < len(history) and history[n]["test_acc"] < CHANCE_ACC:
        n += 1
    return n


def largest_swing(history: list[dict]) -> float:
    """Largest change in test accuracy between consecutive epochs among the last SWING_EPOCHS."""
    accs = [h["test_acc"] for h in history[-SWING_EPOCHS:]]
    return max((abs(b - a) for a, b in zip(accs, accs[1:])), default=0.0)


def observations(c: Comparison, history: list[dict]) -> list[str]:
    m, name = c.metrics, c.variant.name
    last = history[-TREND_EPOCHS:]
    final = history[-1]
    lowest_loss = min(history, key=lambda h: h["test_loss"])
    gap = final["train_acc"] - final["test_acc"]
    facts = [
        f"best test {_pct(m['best_test_acc'])}% at epoch {m['best_test_epoch']} of {m['epochs']}; published "
        f"{_pct(c.variant.published.best_test)}% (Δ {c.difference:+.2f}, band ±{c.half_width:.2f})",
        f"test accuracy over the last {len(last)} epochs: "
        f"{' → '.join(_pct(h['test_acc']) for h in last)} ({trend([h['test_acc'] for h in last])})",
        f"final epoch: train {_pct(final['train_acc'])}%, test {_pct(final['test_acc'])}%, "
        f"train − test {gap:+.2f} points (train accuracy is measured on the training batches in train mode"
        + (", augmented" if c.variant.augment else "") + (", with dropout" if c.variant.dropout else "") + ")",
        f"lowest test loss {lowest_loss['test_loss']:.4f} at epoch {lowest_loss['epoch']} "
        f"(best test accuracy at epoch {m['best_test_epoch']})",
    ]
    stalled = stalled_epochs(history)
    if stalled:
        facts.append(f"the first {stalled} epoch{'s' if stalled > 1 else ''} stayed at chance level (test "
                     f"accuracy below {CHANCE_ACC:.0f}%, test loss {history[stalled - 1]['test_loss']:.2f}): "
                     f"only {len(history) - stalled} of {len(history)} epochs trained")
    swing = largest_swing(history)
    facts.append(f"largest epoch-to-epoch change in test accuracy over the last {SWING_EPOCHS} epochs: "
                 f"{swing:.2f} points, " + (
                     f"more than the band's half-width ({c.half_width:.2f}): which epoch happens to be "
                     "best can alone move a best-of-epochs number out of the band" if swing > c.half_width else
                     f"less than the band's half-width ({c.half_width:.2f})"))
    if not c.params_match:
        facts.append(f"parameter count {m['params']:,} differs from the published {c.variant.published.params:,}")
    return [f"**{name}** ({c.verdict})", ""] + [f"- {f}" for f in facts] + [""]


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


# --- misclassified images -----------------------------------------------------------

@dataclass
class Misclassified:
    images: torch.Tensor    # uint8 (K, 28, 28), K <= MISCLASSIFIED_SHOWN
    labels: torch.Tensor
    predicted: torch.Tensor
    indices: torch.Tensor
    wrong: int              # misclassified among all `total` test images
    total: int


@torch.no_grad()
def find_misclassified(model_path: str | Path, variant: VariantConfig, cfg: TrainConfig,
                       data_root: str | Path) -> Misclassified:
    model_path = Path(model_path)
    if not model_path.is_file():
        raise InputFileError(f"{model_path}: missing; run `dvc repro train@{variant.name}`")
    model = build_model(variant.model, variant.dropout)
    try:
        model.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    except RuntimeError as e:
        raise InputFileError(f"{model_path}: not a state_dict of `{variant.model}` ({str(e).splitlines()[0]}); "
                             f"run `dvc repro train@{variant.name}`") from None
    model.eval()
    images, labels = load_split(data_root, train=False, limit=cfg.test_limit)
    # Same preprocessing as the training loop's evaluation, channels_last included.
    predicted = torch.cat([model(prepare_images(chunk, cfg, augment=False)).argmax(1)
                           for chunk in images.split(cfg.eval_batch_size)])
    wrong = (predicted != labels).nonzero().flatten()
    shown = wrong[:MISCLASSIFIED_SHOWN]
    return Misclassified(images[shown], labels[shown], predicted[shown], shown, len(wrong), len(labels))


# --- the whole report -----------------------------------------------------------------

def _link(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target, start)).as_posix()


def write_figures(inputs: ReportInputs, figures_dir: Path, missed: Misclassified) -> dict[str, Path]:
    figures = {}
    for name, history in inputs.histories.items():
        figures[f"{name}_curves"] = curves_figure(history, f"{name}: loss and accuracy per epoch",
                                                  figures_dir / f"{name}_curves.png", TARGET_ACC)
    figures["overlay"] = overlay_figure(inputs.histories, figures_dir / "test_accuracy_overlay.png", TARGET_ACC)
    final = inputs.final_variant.name
    figures["misclassified"] = misclassified_figure(
        missed.images.numpy(), missed.labels.tolist(), missed.predicted.tolist(), missed.indices.tolist(),
        figures_dir / f"misclassified_{final}.png",
        f"{final}: first {len(missed.indices)} of {missed.wrong:,} misclassified test images")
    return figures


def render_report(inputs: ReportInputs, figures: dict[str, Path], missed: Misclassified, report_dir: Path,
                  model_path: str, machine: str, date: str) -> str:
    comparisons = compare(inputs)
    outside = [c for c in comparisons if c.verdict != "within band"]
    final = inputs.final_variant
    final_metrics = inputs.metrics[final.name]
    link = {key: _link(path, report_dir) for key, path in figures.items()}
    lines = [
        f"# Reproduction report: {len(comparisons)} variants against the published drill-down",
        "",
        "Generated by `stages/report.py` from `params.yaml` and the metrics files; no number here is typed by hand.",
        "",
        *run_section(inputs, machine, date),
        "",
        "## Side by side",
        "",
        results_table(comparisons),
        "",
        "### How the verdict is decided",
        "",
        *band_explanation(inputs, comparisons),
        "",
        f"![test accuracy of every variant]({link['overlay']})",
        "",
        "## Consistency over seeds",
        "",
        *consistency_section(inputs.consistency),
        "",
        "## Observations outside the band",
        "",
    ]
    if outside:
        lines += ["Facts from the per-epoch histories, for each variant outside its band.", ""]
        for c in outside:
            lines += observations(c, inputs.histories[c.variant.name])
    else:
        lines += ["Every variant is within its band.", ""]
    lines += ["## Learning curves", ""]
    for name in inputs.histories:
        lines += [f"### {name}", "", f"![{name} loss and accuracy per epoch]({link[f'{name}_curves']})", ""]
    lines += [
        f"## Misclassified test images: {final.name}",
        "",
        f"The saved final-epoch weights (`{model_path}`) misclassify {missed.wrong:,} of {missed.total:,} test "
        f"images, an accuracy of {100 * (missed.total - missed.wrong) / missed.total:.2f}% "
        f"(final-epoch test accuracy in its metrics file: {_pct(final_metrics['final_test_acc'])}%). "
        f"The first {len(missed.indices)} in test-set order:",
        "",
        f"![misclassified test images of {final.name}]({link['misclassified']})",
        "",
        "## Model cards",
        "",
        *model_cards(inputs.params),
    ]
    return "\n".join(lines).rstrip() + "\n"


def build_report(*, params_path: str | Path, metrics_dir: str | Path, history_dir: str | Path,
                 consistency_path: str | Path, model_path: str | Path, data_root: str | Path,
                 report_path: str | Path, figures_dir: str | Path, readme_path: str | Path | None) -> str:
    """Write the report, its figures and the README block; return the report's markdown."""
    params = load_params(params_path)
    inputs = load_inputs(params, metrics_dir, history_dir, consistency_path)
    report_path, figures_dir = Path(report_path), Path(figures_dir)
    machine, date = describe_machine(), datetime.date.today().isoformat()
    readme = None
    if readme_path is not None:
        # Checked before anything is written, so a README without markers leaves no half-done report.
        if not Path(readme_path).is_file():
            raise InputFileError(f"{readme_path}: missing; create it with the lines `{README_BEGIN}` and "
                                 f"`{README_END}` where the results table goes")
        readme_before = Path(readme_path).read_text()
        readme_block = render_readme_block(inputs, _link(report_path, Path(readme_path).parent), machine, date)
        readme = replace_readme_block(readme_before, readme_block, str(readme_path))
    missed = find_misclassified(model_path, inputs.final_variant, params.train, data_root)
    figures = write_figures(inputs, figures_dir, missed)
    text = render_report(inputs, figures, missed, report_path.parent, str(model_path), machine, date)
    write_text(report_path, text)
    if readme is not None and readme != readme_before:
        with atomic_path(readme_path) as tmp:
            tmp.write_text(readme)
            shutil.copymode(readme_path, tmp)  # a tracked file keeps its mode; mkstemp's would be 0600
    return text
