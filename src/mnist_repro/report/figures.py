"""The report's PNG figures.

Figures are built on ``matplotlib.figure.Figure`` rather than pyplot: no global
state, no GUI backend to select, and nothing is kept alive between figures.
Every PNG is written through ``atomic_path``, so a reader never sees half a file.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..core.files import atomic_path
from ..compare.stats import GAP_AFTER_EPOCH

DPI = 110
ZOOM_BOTTOM = 97.0  # percent; below this the curves are still climbing and say little


def save_png(fig: Figure, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")  # tmp's suffix is .tmp
    return Path(path)


def zoom_limits(values: list[float], target: float, settled: list[float] | None = None) -> tuple[float, float]:
    """y-limits that make the last tenths of a percent readable. The bottom is ZOOM_BOTTOM,
    or lower where `settled` values (epochs past the warm-up) lie below it, so a slow
    variant's curve stays on the axis; the warm-up itself, chance-level epochs included,
    falls off the bottom instead of squashing the rest (the full-scale panel shows it).
    The target line is included when the curves come within a point of it."""
    top = max(values)
    low = min(settled) if settled else top - 1.0
    bottom = min(ZOOM_BOTTOM, math.floor(low * 2) / 2)
    upper = max(top, target) if target - top < 1.0 else top
    return bottom, min(100.0, upper + 0.2)


def _epoch_axis(ax, ylabel: str | None = "test accuracy (%)") -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def comparison_figure(title: str, ours: list[dict], n_seeds: int, published: list[tuple] | None,
                      published_path: list[tuple] | None, path: str | Path, target: float) -> Path:
    """Our per-epoch test accuracy (seed mean, min-max band) against the published run's
    log and the published data path rerun here (mean of its seeds); zoomed on the left, full scale on the right.
    ours: stats.mean_curve output, [] (n_seeds 0) for a variant not run yet: the published
    curves alone; published, published_path: (epoch, test accuracy) pairs or None."""
    fig = Figure(figsize=(11, 5), layout="constrained")
    zoom, full = fig.subplots(1, 2, width_ratios=[3, 1.2])
    epochs = [o["epoch"] for o in ours]
    points = [(o["epoch"], o["max"]) for o in ours] + [(o["epoch"], o["min"]) for o in ours] + [
        p for series in (published, published_path) if series for p in series]
    for ax in (zoom, full):
        if n_seeds > 1:
            ax.fill_between(epochs, [o["min"] for o in ours], [o["max"] for o in ours], color="tab:blue",
                            alpha=0.2, linewidth=0, label=f"ours: min to max of {n_seeds} seeds")
        if ours:
            ax.plot(epochs, [o["mean"] for o in ours], color="tab:blue", marker="o", markersize=4,
                    label=f"ours: mean of {n_seeds} seeds" if n_seeds > 1 else "ours (one seed)")
        for series, style, label in ((published, dict(color="tab:red", marker="s", linestyle="--"),
                                      "published run (its notebook's log)"),
                                     (published_path, dict(color="tab:green", marker="^", linestyle=":"),
                                      "published data path rerun here (mean of its seeds)")):
            if series:
                ax.plot([e for e, _ in series], [a for _, a in series], markersize=4, label=label, **style)
        ax.axhline(target, color="black", linestyle="--", linewidth=1)
        _epoch_axis(ax, ylabel="test accuracy (%)" if ax is zoom else None)
    zoom.set_ylim(*zoom_limits([a for _, a in points], target, [a for e, a in points if e > GAP_AFTER_EPOCH]))
    zoom.set_title(f"zoom (dashed: {target:.1f}%)")
    full.set_ylim(0, 100)
    full.set_title("all epochs, full scale")
    handles, labels = zoom.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=9)
    fig.suptitle(title)
    return save_png(fig, path)


def overlay_figure(curves: dict[str, list[tuple]], path: str | Path, target: float) -> Path:
    """Every variant's test accuracy (name -> (epoch, accuracy) pairs) on shared axes:
    all epochs, and zoomed on the target."""
    fig = Figure(figsize=(13, 5.5), layout="constrained")
    full, zoom = fig.subplots(1, 2, sharex=True)
    markers = "osD^vP*X<>"
    for i, (name, curve) in enumerate(curves.items()):
        style = dict(color=f"C{i % 10}", marker=markers[i % len(markers)], markersize=4, linewidth=1.5,
                     linestyle="-" if i < 10 else "--", label=name)
        for ax in (full, zoom):
            ax.plot([e for e, _ in curve], [a for _, a in curve], **style)
    for ax in (full, zoom):
        ax.axhline(target, color="black", linestyle="--", linewidth=1)
        _epoch_axis(ax)
    full.set_title("all epochs")
    full.text(0.99, 0.02, f"dashed: {target:.1f}%", transform=full.transAxes, ha="right", fontsize=9)
    zoom.set_ylim(*zoom_limits([a for curve in curves.values() for _, a in curve], target))
    zoom.set_title("zoom")
    handles, labels = zoom.get_legend_handles_labels()  # below the axes: inside, it hides the lowest curve
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 7), fontsize=9)
    fig.suptitle("Test accuracy per epoch, all variants (mean over each variant's seeds)")
    return save_png(fig, path)


def misclassified_figure(images, true_labels, predicted, indices, path: str | Path, title: str,
                         limit: int = 25) -> Path:
    """Grid of up to `limit` misclassified images (uint8 28x28), each titled "true X / pred Y"."""
    count = min(limit, len(indices))
    columns = 5
    rows = max(1, -(-count // columns))
    fig = Figure(figsize=(columns * 1.9, rows * 2.1 + 0.5), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k >= count:
            continue
        ax.imshow(images[k], cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(f"true {int(true_labels[k])} / pred {int(predicted[k])}", fontsize=10)
        # The test-set index, so an image can be looked up; inside the frame to keep rows apart.
        ax.text(0.03, 0.97, f"#{int(indices[k])}", transform=ax.transAxes, ha="left", va="top",
                fontsize=7, color="tab:blue")
    if count == 0:
        axes[0, 0].text(0, 0.5, "no misclassified test images", fontsize=12)
    fig.suptitle(title)
    return save_png(fig, path)


def pareto_figure(points: list[tuple], path: str | Path, highlight=()) -> Path:
    """Trainable parameters (log x) against mean final-epoch test accuracy, one labelled point per
    variant: (name, parameters, mean, low, high), low and high the ends of the 95% prediction
    interval for one more run (None: too few runs for one); `highlight`'s names (the registered
    variants) drawn as stars."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for name, count, mean, low, high in points:
        style = (dict(color="tab:red", marker="*", markersize=12) if name in highlight
                 else dict(color="tab:blue", marker="o", markersize=6))
        ax.errorbar([count], [mean], yerr=None if low is None else [[mean - low], [high - mean]], linestyle="none",
                    capsize=3, **style)
        ax.annotate(name, (count, mean), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("final-epoch test accuracy, mean over seeds (%)")
    ax.grid(alpha=0.3, which="both")
    ax.set_title("Parameters against mean final test accuracy\n(bars: 95% prediction interval for one more run; "
                 "stars: registered variants)", fontsize=10)
    return save_png(fig, path)
