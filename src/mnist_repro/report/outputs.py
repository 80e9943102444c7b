"""What the report stage writes beside the markdown: the PNG figures and the long-form
curves file for `dvc plots` (one row per variant and epoch)."""

from __future__ import annotations

from pathlib import Path

from ..core.data import load_split
from ..core.errors import InputFileError
from .figures import comparison_figure, misclassified_figure, overlay_figure, pareto_figure
from ..core.files import write_json
from ..compare.stats import mean_curve, prediction_interval
from .inputs import ReportInputs

MISCLASSIFIED_SHOWN = 25
MAIN_KEYS = ("test_acc", "test_loss", "train_acc", "train_loss")  # of the main run (seed train.seed)


def _pairs(history, key: str = "test_acc") -> list[tuple]:
    return [(e["epoch"], e[key]) for e in history]


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
        published_path_runs = inputs.published_path.get(name)
        if not histories and not pub:
            continue
        title = (f"{name}: test accuracy per epoch of our seeds (no published run)" if not pub
                 else f"{name}: test accuracy per epoch, ours against the published run" if histories
                 else f"{name}: test accuracy per epoch of the published run (ours not run yet)")
        path_mean = (_pairs(mean_curve([c["history"] for c in published_path_runs]), "mean")
                     if published_path_runs else None)
        figures[name] = comparison_figure(title, mean_curve(histories), len(histories),
                                          _pairs(pub.log) if pub else None, path_mean,
                                          figures_dir / f"{name}_vs_published.png", target)
    curves = {name: [(c["epoch"], c["mean"]) for c in mean_curve(h)] for name, h in inputs.histories.items() if h}
    if curves:
        figures["overlay"] = overlay_figure(curves, figures_dir / "test_accuracy_overlay.png", target)
    registered = list(inputs.params.registration.variants)
    if registered:  # only beside a registration: the report without one is unchanged
        figures["pareto"] = pareto_figure(pareto_points(inputs), figures_dir / "params_vs_final_test.png", registered)
    if inputs.errors is not None and inputs.errors.get("evaluated_on", "test") == "test":
        figures["misclassified"] = write_misclassified(
            inputs, data_root, figures_dir / f"misclassified_{inputs.final_variant.name}.png")
    return figures


def pareto_points(inputs: ReportInputs) -> list[tuple]:
    """(name, parameters, mean final test, interval's low, high) of every variant with runs on the test set."""
    points = []
    for name, runs in inputs.ran.items():
        if runs[0].get("evaluated_on", "test") == "test":
            interval = prediction_interval([r["final_test_acc"] for r in runs])
            points.append((name, runs[0]["params"], interval.mean, interval.low, interval.high))
    return points


def curve_rows(inputs: ReportInputs) -> list[dict]:
    """One row per variant and epoch: the main run's MAIN_KEYS, our test accuracy over seeds
    (ours_mean/min/max), the published log's ("published") and the published path's mean over its
    seeds ("published_path"); null where a value does not exist (not run, no published entry)."""
    rows = []
    for name, histories in inputs.histories.items():
        pub, published_path_runs = inputs.reference.get(name), inputs.published_path.get(name)
        main = {e["epoch"]: e for e in histories[0]} if histories else {}
        ours = {c["epoch"]: c for c in mean_curve(histories)}
        published = {e["epoch"]: e["test_acc"] for e in pub.log} if pub else {}
        path = ({c["epoch"]: c["mean"] for c in mean_curve([c["history"] for c in published_path_runs])}
                if published_path_runs else {})
        for epoch in sorted(set(main) | set(published) | set(path)):
            row = {"variant": name, "epoch": epoch}
            row.update({k: _round(main.get(epoch, {}).get(k)) for k in MAIN_KEYS})
            row.update({f"ours_{k}": _round(ours.get(epoch, {}).get(k)) for k in ("mean", "min", "max")})
            row.update(published=_round(published.get(epoch)), published_path=_round(path.get(epoch)))
            rows.append(row)
    return rows


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def write_curves(inputs: ReportInputs, path: Path) -> Path:
    write_json(path, curve_rows(inputs))
    return Path(path)


def remove_stale(directory: Path, pattern: str, written) -> None:
    """Delete what an earlier report left in directory and this one did not write (a removed variant's file)."""
    for stale in set(directory.glob(pattern)) - set(written):
        stale.unlink()
