"""The consistency and report stages, run on metrics from real (tiny) training runs."""

from __future__ import annotations

import importlib.util
import json
import math
import stat
from pathlib import Path

import pytest
import torch
import yaml

from mnist_repro.config import load_params
from mnist_repro.consistency import InputFileError
from mnist_repro.io import atomic_path, write_json
from mnist_repro.report import (README_BEGIN, README_END, ReportInputs, band_half_width, compare,
                                describe_machine, load_inputs, render_readme_block, replace_readme_block, results_table,
                                trend, verdict)
from mnist_repro.train import make_accelerator, run_training

REPO = Path(__file__).resolve().parents[1]
TINY_VARIANTS = ("skeleton", "lr_scheduler")  # cheap models; lr_scheduler is the consistency variant
EXTRA_SEED = 2
FIGURES = {"skeleton_curves.png", "lr_scheduler_curves.png", "test_accuracy_overlay.png",
           "misclassified_lr_scheduler.png"}
README = f"# project\n\nintro stays\n\n{README_BEGIN}\nstale table\n{README_END}\n\n## tail stays\n"


def load_stage(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_stage", REPO / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_stage(name: str, argv: list[str]) -> None:
    from mnist_repro import cli
    cli.run(load_stage(name).main, [str(a) for a in argv])


def write_run(project: Path, result, metrics: str, history: str, model: str | None = None) -> None:
    """What stages/train.py writes, at the paths dvc.yaml gives it."""
    write_json(project / history, result.history)
    write_json(project / metrics, result.metrics)
    if model:
        with atomic_path(project / model) as tmp:
            torch.save(result.model.state_dict(), tmp)


@pytest.fixture(scope="module")
def project(tmp_path_factory, mnist_root, quick_params) -> Path:
    """A tiny copy of the pipeline's outputs: two variants and one extra seed, 2 epochs each."""
    project = tmp_path_factory.mktemp("project")
    all_variants = yaml.safe_load((REPO / "params.yaml").read_text())["variants"]
    quick_params(project, epochs=2, train_limit=256, test_limit=200, overrides={
        "variants": {name: all_variants[name] for name in TINY_VARIANTS},
        "consistency.extra_seeds": [EXTRA_SEED],
    })
    params = load_params(project / "params.yaml")
    accelerator = make_accelerator()
    for name, variant in params.variants.items():
        result = run_training(variant, params.train, mnist_root, accelerator=accelerator)
        write_run(project, result, f"metrics/{name}.json", f"metrics/history/{name}.json", f"models/{name}.pt")
    result = run_training(params.variant("lr_scheduler"), params.train, mnist_root, seed=EXTRA_SEED,
                          accelerator=accelerator)
    write_run(project, result, f"metrics/consistency/seed_{EXTRA_SEED}.json",
              f"metrics/consistency/history/seed_{EXTRA_SEED}.json")
    (project / "README.md").write_text(README)
    (project / "README.md").chmod(0o644)
    return project


def report_argv(project: Path, mnist_root: Path, readme: str = "README.md") -> list:
    return ["--params", project / "params.yaml", "--metrics", project / "metrics",
            "--history", project / "metrics/history", "--consistency", project / "metrics/consistency.json",
            "--model", project / "models/lr_scheduler.pt", "--data", mnist_root,
            "--out", project / "metrics/report.md", "--figures", project / "metrics/figures",
            "--readme", project / readme]


@pytest.fixture(scope="module")
def built(project, mnist_root) -> Path:
    run_stage("consistency", ["--params", project / "params.yaml", "--main", project / "metrics/lr_scheduler.json",
                              "--runs", project / "metrics/consistency", "--out", project / "metrics/consistency.json"])
    run_stage("report", report_argv(project, mnist_root))
    return project


def table_of(markdown: str) -> str:
    """The first markdown table in a text."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Variant |"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


# --- the stages end to end -------------------------------------------------------------

def test_consistency_summary_of_real_runs(built):
    summary = json.loads((built / "metrics/consistency.json").read_text())
    main = json.loads((built / "metrics/lr_scheduler.json").read_text())
    extra = json.loads((built / f"metrics/consistency/seed_{EXTRA_SEED}.json").read_text())
    assert summary["variant"] == "lr_scheduler" and summary["n"] == 2
    assert summary["seeds"] == [
        {"seed": 1, "best_test_acc": main["best_test_acc"], "final_test_acc": main["final_test_acc"]},
        {"seed": EXTRA_SEED, "best_test_acc": extra["best_test_acc"], "final_test_acc": extra["final_test_acc"]},
    ]
    assert summary["test_images"] == 200


def test_report_has_every_variant_and_every_section(built):
    report = (built / "metrics/report.md").read_text()
    table = table_of(report)
    assert len(table.splitlines()) == 2 + len(TINY_VARIANTS)
    for name in TINY_VARIANTS:
        assert f"| {name} |" in table
        assert f"![{name} loss and accuracy per epoch](figures/{name}_curves.png)" in report
    for heading in ("## Side by side", "### How the verdict is decided", "## Consistency over seeds",
                    "## Observations outside the band", "## Misclassified test images: lr_scheduler",
                    "## Model cards", "### `skeleton`", "### `lr_scheduler`"):
        assert heading in report
    assert "Device: cpu; processes: 1" in report
    # Two tiny epochs are far from the published numbers: both variants are outside the band.
    assert report.count("lowest test loss") == len(TINY_VARIANTS)
    assert "receptive field of the last layer: 28×28 pixels" in report


def test_misclassified_count_matches_the_final_epoch_accuracy(built):
    report = (built / "metrics/report.md").read_text()
    final = json.loads((built / "metrics/lr_scheduler.json").read_text())["final_test_acc"]
    assert f"an accuracy of {final:.2f}%" in report  # the saved weights are the final epoch's


def test_figures_are_non_empty_pngs(built):
    figures = built / "metrics/figures"
    assert {p.name for p in figures.iterdir()} == FIGURES
    for png in figures.iterdir():
        data = png.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, png.name


def test_readme_block_is_the_report_table(built):
    readme = (built / "README.md").read_text()
    report = (built / "metrics/report.md").read_text()
    assert "stale table" not in readme
    assert readme.startswith("# project\n\nintro stays\n\n" + README_BEGIN + "\n")
    assert readme.endswith(README_END + "\n\n## tail stays\n")
    assert table_of(readme) == table_of(report)
    params = load_params(built / "params.yaml")
    inputs = load_inputs(params, built / "metrics", built / "metrics/history", built / "metrics/consistency.json")
    run_line = next(line for line in readme.splitlines() if line.startswith("Run: "))
    date = run_line.split("Report generated ")[1].split(" ")[0]
    block = render_readme_block(inputs, "metrics/report.md", describe_machine(), date)
    assert f"{README_BEGIN}\n{block}\n{README_END}" in readme
    assert f"{len(TINY_VARIANTS)} variants × " in run_line and "training wall time" in run_line
    assert replace_readme_block(readme, block) == readme  # a rerun changes nothing
    assert stat.S_IMODE((built / "README.md").stat().st_mode) == 0o644


def test_readme_without_markers_stops_the_report_before_writing(project, mnist_root, tmp_path, capsys):
    (project / "NO_MARKERS.md").write_text("# nothing to replace\n")
    argv = report_argv(project, mnist_root, readme="NO_MARKERS.md")
    argv[argv.index("--out") + 1] = tmp_path / "report.md"
    with pytest.raises(SystemExit) as exit_info:
        run_stage("report", argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and README_BEGIN in err and "NO_MARKERS.md" in err
    assert not (tmp_path / "report.md").exists()


def test_replace_readme_block_rejects_bad_markers():
    for text in ("no markers\n", f"{README_END}\n{README_BEGIN}\n", f"{README_BEGIN}\n{README_BEGIN}\n{README_END}\n"):
        with pytest.raises(InputFileError, match="results:begin"):
            replace_readme_block(text, "table")


# --- verdicts on constructed numbers ---------------------------------------------------

def test_band_half_width_is_twice_the_larger_noise():
    binomial = 100 * math.sqrt(0.9953 * 0.0047 / 10_000)  # 0.0684 points
    assert band_half_width(99.53, 10_000, None) == pytest.approx(2 * binomial)
    assert band_half_width(99.53, 10_000, 0.03) == pytest.approx(2 * binomial)  # seeds quieter than sampling
    assert band_half_width(99.53, 10_000, 0.1) == pytest.approx(0.2)            # seeds noisier


@pytest.mark.parametrize("difference, expected", [
    (0.0, "within band"), (0.14, "within band"), (-0.14, "within band"),
    (0.15, "above"), (-0.15, "below"), (2.0, "above"), (-2.0, "below"),
])
def test_verdict(difference, expected):
    assert verdict(difference, 0.14) == expected


def hand_made_inputs(best_test: dict, seed_std: float) -> ReportInputs:
    params = load_params(REPO / "params.yaml")
    metrics = {}
    for name, v in params.variants.items():
        metrics[name] = {"variant": name, "params": v.published.params, "best_train_acc": 99.0,
                         "best_test_acc": best_test[name], "best_test_epoch": 15, "final_test_acc": best_test[name],
                         "epochs": 15, "test_images": 10_000, "wall_seconds": 90.0}
    consistency = {"variant": "lr_scheduler", "best_test_acc": {"std": seed_std}}
    return ReportInputs(params, metrics, {}, consistency)


def test_compare_on_constructed_numbers():
    params = load_params(REPO / "params.yaml")
    published = {name: v.published.best_test for name, v in params.variants.items()}
    # seed SD 0.1 gives a band of ±0.2 wherever the binomial SE is below 0.1 (p >= 99.0%)
    best = dict(published, basic_setup=published["basic_setup"] + 0.19,   # 99.47: within
                batch_norm=published["batch_norm"] + 0.25,                 # 99.29: above
                lr_scheduler=published["lr_scheduler"] - 0.25)             # 99.28: below
    rows = {c.variant.name: c for c in compare(hand_made_inputs(best, seed_std=0.1))}
    assert rows["basic_setup"].verdict == "within band" and rows["basic_setup"].difference == 0.19
    assert rows["batch_norm"].verdict == "above" and rows["batch_norm"].difference == 0.25
    assert rows["lr_scheduler"].verdict == "below" and rows["lr_scheduler"].difference == -0.25
    assert rows["lr_scheduler"].half_width == pytest.approx(0.2)
    # skeleton at 98.43%: binomial SE 0.124 > seed SD, so its band is wider than ±0.2
    assert rows["skeleton"].half_width == pytest.approx(2 * 100 * math.sqrt(0.9843 * 0.0157 / 10_000))
    table = results_table(list(rows.values()))
    assert "| 6,720 / 6,720 |" in table and "| -0.25 | below (±0.20) |" in table
    assert "| +0.25 | above (±0.20) |" in table and "mismatch" not in table
    assert all(row.endswith("| 1.5 min |") for row in table.splitlines()[2:])  # each run's wall_seconds


def test_parameter_mismatch_is_flagged():
    params = load_params(REPO / "params.yaml")
    inputs = hand_made_inputs({n: v.published.best_test for n, v in params.variants.items()}, 0.05)
    inputs.metrics["dropout"]["params"] = 5_000
    assert "| 5,000 / 5,088 **mismatch** |" in results_table(compare(inputs))


def epochs_with(test_accs: list[float]) -> list[dict]:
    return [{"epoch": i + 1, "test_acc": a, "test_loss": 2.3 if a < 20 else 0.05} for i, a in enumerate(test_accs)]


def test_stalled_start_and_late_swing():
    from mnist_repro.report import largest_swing, stalled_epochs
    assert stalled_epochs(epochs_with([9.8, 11.4, 87.0, 95.0])) == 2
    assert stalled_epochs(epochs_with([92.0, 9.8])) == 0  # only a leading stall counts
    assert largest_swing(epochs_with([10.0, 98.0, 98.6, 98.5, 98.7, 98.4, 98.9])) == pytest.approx(0.5)


def test_trend_of_the_last_epochs():
    assert trend([99.1, 99.2, 99.3]) == "rising each epoch"
    assert trend([99.3, 99.2, 99.1]) == "falling each epoch"
    assert trend([99.1, 99.3, 99.3]) == "not monotonic"


# --- consistency on hand-made seed files ------------------------------------------------

def seed_metrics(seed: int, best: float, final: float, **extra) -> dict:
    return {"variant": "lr_scheduler", "seed": seed, "best_test_acc": best, "final_test_acc": final,
            "epochs": 15, "train_images": 60_000, "test_images": 10_000, **extra}


@pytest.fixture
def seed_files(tmp_path, quick_params):
    quick_params(tmp_path, overrides={"train.seed": 1, "consistency.extra_seeds": [2, 3]})
    write_json(tmp_path / "metrics/lr_scheduler.json", seed_metrics(1, 99.50, 99.45))
    write_json(tmp_path / "metrics/consistency/seed_2.json", seed_metrics(2, 99.40, 99.38))
    write_json(tmp_path / "metrics/consistency/seed_3.json", seed_metrics(3, 99.30, 99.20))
    write_json(tmp_path / "metrics/consistency/seed_9.json", seed_metrics(9, 10.0, 10.0))  # not configured
    return tmp_path


def consistency_argv(root: Path) -> list[str]:
    return [str(a) for a in ("--params", root / "params.yaml", "--main", root / "metrics/lr_scheduler.json",
                             "--runs", root / "metrics/consistency", "--out", root / "metrics/consistency.json")]


def test_consistency_numbers_by_hand(seed_files):
    run_stage("consistency", consistency_argv(seed_files))
    summary = json.loads((seed_files / "metrics/consistency.json").read_text())
    # best 99.50, 99.40, 99.30: mean 99.40, deviations ±0.10 and 0 -> sample SD sqrt(0.02 / 2) = 0.1
    assert summary["best_test_acc"] == {"mean": 99.40, "std": 0.1, "min": 99.30, "max": 99.50, "n": 3}
    # final 99.45, 99.38, 99.20: mean 99.3433; squared deviations 0.011378 + 0.001344 + 0.020544
    # = 0.033267, / 2 = 0.016633, sqrt = 0.12897
    assert summary["final_test_acc"] == {"mean": 99.34, "std": 0.129, "min": 99.20, "max": 99.45, "n": 3}
    assert summary["reached_target_best"] == 2    # 99.50 and 99.40 (the target itself counts)
    assert summary["reached_target_final"] == 1   # 99.45
    assert [s["seed"] for s in summary["seeds"]] == [1, 2, 3]  # seed_9.json is not configured
    assert summary["variant"] == "lr_scheduler" and summary["target_acc"] == 99.40


def test_consistency_missing_seed_is_one_clear_line(seed_files, capsys):
    (seed_files / "metrics/consistency/seed_3.json").unlink()
    with pytest.raises(SystemExit) as exit_info:
        run_stage("consistency", consistency_argv(seed_files))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "seed_3.json: missing" in err and "consistency_run@3" in err
    assert not (seed_files / "metrics/consistency.json").exists()


def test_consistency_rejects_a_stale_or_mismatched_run(seed_files):
    write_json(seed_files / "metrics/consistency/seed_2.json", seed_metrics(7, 99.4, 99.4))
    with pytest.raises(InputFileError, match="seed 7, expected variant 'lr_scheduler' seed 2"):
        load_stage("consistency").main(consistency_argv(seed_files))
    write_json(seed_files / "metrics/consistency/seed_2.json", seed_metrics(2, 99.4, 99.4, test_images=200))
    with pytest.raises(InputFileError, match="differ in"):
        load_stage("consistency").main(consistency_argv(seed_files))
