"""The report's PNG figures.

Figures are built on ``matplotlib.figure.Figure`` rather than pyplot: no global
state, no GUI backend to select, and nothing is kept alive between figures.
Every PNG is written through ``atomic_path``, so a reader never sees half a file.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .io import atomic_path

DPI = 110
ZOOM_BOTTOM = 97.0  # percent; below this the seven curves are still climbing and say little


def save_png(fig: Figure, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")  # tmp's suffix is .tmp
    return Path(path)


def _series(history: list[dict], key: str) -> tuple[list, list]:
    return [h["epoch"] for h in history], [h[key] for h in history]


def curves_figure(history: list[dict], title: str, path: str | Path, target: float) -> Path:
    """2x2 like the published notebooks: train loss, train accuracy, test loss, test accuracy."""
    fig = Figure(figsize=(10, 7), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    panels = [("train_loss", "Train loss (NLL)", axes[0, 0]), ("train_acc", "Train accuracy (%)", axes[1, 0]),
              ("test_loss", "Test loss (NLL)", axes[0, 1]), ("test_acc", "Test accuracy (%)", axes[1, 1])]
    for key, label, ax in panels:
        epochs, values = _series(history, key)
        ax.plot(epochs, values, marker="o", markersize=3.5, color="tab:blue" if "train" in key else "tab:orange")
        ax.set_title(label)
        ax.ticklabel_format(axis="y", useOffset=False)  # an offset like "+2.302" hides the actual values
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    test_ax = axes[1, 1]
    test_ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"{target:.1f}%")
    best = max(history, key=lambda h: h["test_acc"])  # first epoch reaching the best, as in the metrics
    test_ax.plot([best["epoch"]], [best["test_acc"]], marker="*", markersize=12, color="tab:red", linestyle="none",
                 label=f"best {best['test_acc']:.2f}% (epoch {best['epoch']})")
    test_ax.legend(loc="lower right", fontsize=9)
    fig.suptitle(title)
    return save_png(fig, path)


def overlay_figure(histories: dict[str, list[dict]], path: str | Path, target: float) -> Path:
    """Every variant's test accuracy on shared axes: all epochs, and zoomed on the target."""
    fig = Figure(figsize=(13, 5.5), layout="constrained")
    full, zoom = fig.subplots(1, 2, sharex=True)
    markers = "osD^vP*X<>"
    colors = [f"C{i}" for i in range(10)]
    top = max(h["test_acc"] for history in histories.values() for h in history)
    for i, (name, history) in enumerate(histories.items()):
        epochs, values = _series(history, "test_acc")
        style = dict(color=colors[i % 10], marker=markers[i % len(markers)], markersize=4, linewidth=1.5,
                     linestyle="-" if i < 10 else "--", label=name)
        full.plot(epochs, values, **style)
        zoom.plot(epochs, values, **style)
    for ax in (full, zoom):
        ax.axhline(target, color="black", linestyle="--", linewidth=1)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    full.set_title("all epochs")
    full.text(0.99, 0.02, f"dashed: {target:.1f}%", transform=full.transAxes, ha="right", fontsize=9)
    # The zoom only helps once curves reach it; tiny quick runs never do.
    if top > ZOOM_BOTTOM:
        zoom.set_ylim(ZOOM_BOTTOM, min(100.0, max(top, target) + 0.15))
        zoom.set_title(f"zoom: {ZOOM_BOTTOM:.0f}% and above")
    else:
        zoom.set_title(f"zoom (no epoch above {ZOOM_BOTTOM:.0f}%)")
    zoom.legend(loc="lower right", fontsize=9, ncol=2)
    fig.suptitle("Test accuracy per epoch, all variants")
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
