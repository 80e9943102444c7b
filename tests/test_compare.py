"""The compare stage and the statistics behind its verdicts, on the committed 15-epoch runs."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess

import pytest

from mnist_repro.config import load_params
from mnist_repro.errors import InputFileError
from mnist_repro.reference import load_reference
from mnist_repro.stats import attribute, band, binomial_se, describe, largest_gap, mean_curve, stalled_epochs

STEPS = ["1_basic_setup", "2_skeleton", "3_batch_norm", "4_dropout", "5_fc_after_gap", "6_augmentation",
         "7_lr_scheduler"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory, make_results_project, run_stage, compare_argv):
    root = make_results_project(tmp_path_factory.mktemp("compared"))
    run_stage("compare", compare_argv(root))
    return root


@pytest.fixture
def project(tmp_path, make_results_project):
    """A fresh copy to break."""
    return make_results_project(tmp_path)


def rows_of(root) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted((root / "metrics/table").glob("*.json"))}


# --- the table ---------------------------------------------------------------------------

def test_one_row_per_variant_in_params_order_with_the_reference_values(compared):
    rows = rows_of(compared)
    assert list(rows) == STEPS  # file names sort in params.yaml order, as `dvc metrics show` lists them
    reference = load_reference(compared / "reference/published.json")
    for step, row in rows.items():
        name = step.split("_", 1)[1]
        pub = reference.get(name)
        run = json.loads((compared / f"metrics/runs/{name}/seed_1.json").read_text())
        assert row["best_test"]["published"] == pub.best_test and row["best_train"]["published"] == pub.best_train
        assert row["params"] == {"ours": run["params"], "published": pub.params}
        assert row["best_test"]["ours"] == run["best_test_acc"] and row["final_test"]["ours"] == run["final_test_acc"]
        assert row["final_test"]["published"] == pub.log[-1]["test_acc"]
        assert set(row) == {"best_test", "best_test_epoch", "best_train", "final_test", "params", "seeds", "verdict"}
        assert "wall_seconds" not in json.dumps(row)
    # Only lr_scheduler has extra seeds and a published-path rerun configured.
    assert [r["seeds"]["n"] for r in rows.values()] == [1, 1, 1, 1, 1, 1, 5]
    assert [r["best_test"]["published_path"] for r in rows.values()] == [None] * 6 + [99.48]
    # dropout's table value (98.64) is its log's final epoch; the log's best, 98.76, came at epoch 12
    assert rows["4_dropout"]["best_test_epoch"] == {"ours": 13, "published": 12}


def test_verdicts_of_the_committed_runs_by_hand(compared):
    rows = rows_of(compared)
    # lr_scheduler, five seeds: best 99.47, 99.43, 99.51, 99.43, 99.52 -> mean 99.472; squared
    # deviations 0.000004 + 0.001764 + 0.001444 + 0.001764 + 0.002304 = 0.00728, / 4 -> sd 0.04266.
    # se at 99.53 over 10,000: sqrt(0.9953 * 0.0047 / 10000) = 0.06839 points.
    # band = 2 * sqrt(0.00182 + 0.004678) = 0.1612: 99.53 lies in [99.31, 99.63].
    # final epochs 99.47, 99.41, 99.45, 99.43, 99.52: mean 99.456, lowest 99.41, all five >= 99.40
    assert rows["7_lr_scheduler"]["seeds"] == {"n": 5, "best_test_mean": 99.47, "best_test_sd": 0.043,
                                               "final_test_mean": 99.46, "final_test_min": 99.41,
                                               "final_reach_99_4": 5}
    assert rows["7_lr_scheduler"]["verdict"] == {"band": 0.16, "published": "within"}
    # skeleton, one seed: band = 2 * se at 98.43 = 2 * 0.1243 = 0.2486; 98.43 > 97.96 + 0.2486.
    assert rows["2_skeleton"]["seeds"] == {"n": 1, "best_test_mean": 97.96, "best_test_sd": None,
                                           "final_test_mean": 97.65, "final_test_min": 97.65, "final_reach_99_4": 0}
    assert rows["2_skeleton"]["verdict"] == {"band": 0.25, "published": "above"}
    # dropout: 98.64 against 98.85 ± 2 * 0.1158 = [98.618, 99.082]: just within.
    assert rows["4_dropout"]["verdict"] == {"band": 0.23, "published": "within"}


def metrics_show(table_dir, tmp_path) -> list[str]:
    """`dvc metrics show --md` of a copy of table_dir, as a reader of the project sees it."""
    shutil.copytree(table_dir, tmp_path / "metrics/table")
    (tmp_path / "dvc.yaml").write_text("metrics:\n  - metrics/table\n")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, env=env)
    return subprocess.run(["dvc", "metrics", "show", "--md"], cwd=tmp_path, check=True, env=env,
                          capture_output=True, text=True).stdout.strip().splitlines()


def test_dvc_metrics_show_prints_the_rows_in_order(compared, tmp_path):
    """What a reader of `dvc metrics show --md` sees: the columns side by side, the steps in order."""
    out = metrics_show(compared / "metrics/table", tmp_path)
    header = [c.strip() for c in out[0].strip("|").split("|")]
    assert header[:4] == ["Path", "best_test.ours", "best_test.published", "best_test.published_path"]
    assert header[-2:] == ["verdict.band", "verdict.published"]
    assert [line.split("|")[1].strip() for line in out[2:]] == [f"metrics/table/{s}.json" for s in STEPS]


def test_a_variant_without_published_numbers_has_nulls_not_a_verdict(project, run_stage, compare_argv):
    ref = json.loads((project / "reference/published.json").read_text())
    del ref["table"]["skeleton"], ref["logs"]["skeleton"]
    (project / "reference/published.json").write_text(json.dumps(ref))
    run_stage("compare", compare_argv(project))
    row = rows_of(project)["2_skeleton"]
    assert row["best_test"] == {"ours": 97.96, "published": None, "published_path": None}
    assert row["verdict"] == {"band": None, "published": None} and row["params"]["published"] is None


def test_leftover_files_of_unconfigured_seeds_are_ignored(compared, project, run_stage, compare_argv):
    junk = json.loads((project / "metrics/runs/skeleton/seed_1.json").read_text())
    (project / "metrics/runs/skeleton/seed_9.json").write_text(json.dumps({**junk, "seed": 9, "best_test_acc": 10.0}))
    (project / "metrics/table").mkdir(parents=True)
    (project / "metrics/table/skeleton.json").write_text("{}")  # an old layout's row: removed
    run_stage("compare", compare_argv(project))
    assert rows_of(project) == rows_of(compared)


# --- one-line errors ------------------------------------------------------------------------

@pytest.mark.parametrize("missing, stage", [
    # An extra seed missing while the main run exists (a main run missing is "not run yet", below).
    ("metrics/runs/lr_scheduler/seed_3.json", "dvc repro seed@lr_scheduler-3"),
    ("metrics/published_path/lr_scheduler.json", "dvc repro published_path@lr_scheduler"),
])
def test_a_missing_configured_file_is_one_line_naming_its_stage(project, run_stage, compare_argv, capsys,
                                                               missing, stage):
    (project / missing).unlink()
    with pytest.raises(SystemExit) as exit_info:
        run_stage("compare", compare_argv(project))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{missing.rsplit('/', 1)[1]}: missing" in err and stage in err
    assert not (project / "metrics/table").exists()


# --- a variant not run yet ------------------------------------------------------------------

def test_a_variant_without_its_main_run_is_a_not_run_row(compared, project, run_stage, compare_argv, capsys,
                                                         tmp_path):
    (project / "metrics/runs/basic_setup/seed_1.json").unlink()
    run_stage("compare", compare_argv(project))
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 7
    assert out[0] == (f"basic_setup: not run yet ({project}/metrics/runs/basic_setup/seed_1.json missing): "
                      "dvc repro train@basic_setup")
    assert sum("not run" in line for line in out) == 1
    rows = rows_of(project)
    # The published side as for a run variant (the reference file's basic_setup entry); every "ours" null.
    pub = load_reference(project / "reference/published.json").get("basic_setup")
    assert rows["1_basic_setup"] == {
        "best_test": {"ours": None, "published": 99.28, "published_path": None},
        "best_test_epoch": {"ours": None, "published": pub.log_best_test["epoch"]},
        "best_train": {"ours": None, "published": 99.93},
        "final_test": {"ours": None, "published": pub.log[-1]["test_acc"]},
        "params": {"ours": None, "published": 6379786},
        "seeds": {"n": 0, "best_test_mean": None, "best_test_sd": None,
                  "final_test_mean": None, "final_test_min": None, "final_reach_99_4": None},
        "verdict": {"band": None, "published": "not run"}}
    assert {k: v for k, v in rows.items() if k != "1_basic_setup"} == {
        k: v for k, v in rows_of(compared).items() if k != "1_basic_setup"}
    # `dvc metrics show --md` lists the row with "-" for the nulls (not "None", not a dropped column).
    shown = metrics_show(project / "metrics/table", tmp_path / "shown")  # project is tmp_path itself
    header = [c.strip() for c in shown[0].strip("|").split("|")]
    row = dict(zip(header, [c.strip() for c in shown[2].strip("|").split("|")]))
    assert row["Path"] == "metrics/table/1_basic_setup.json"
    assert row["best_test.ours"] == row["seeds.best_test_mean"] == row["verdict.band"] == "-"
    assert row["seeds.n"] == "0" and row["verdict.published"] == "not run" and row["best_test.published"] == "99.28"


def test_extra_seeds_without_the_main_run_are_ignored_and_said_so(project, run_stage, compare_argv, capsys):
    (project / "metrics/runs/lr_scheduler/seed_1.json").unlink()
    (project / "metrics/runs/lr_scheduler/seed_3.json").unlink()  # no longer an error: nothing of it is read
    run_stage("compare", compare_argv(project))
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == (f"lr_scheduler: not run yet ({project}/metrics/runs/lr_scheduler/seed_1.json missing; "
                       "extra seeds 2, 4, 5 present, ignored until it exists): dvc repro train@lr_scheduler")
    row = rows_of(project)["7_lr_scheduler"]
    assert row["seeds"] == {"n": 0, "best_test_mean": None, "best_test_sd": None,
                            "final_test_mean": None, "final_test_min": None, "final_reach_99_4": None}
    assert row["best_test"] == {"ours": None, "published": 99.53, "published_path": 99.48}  # its rerun exists
    assert row["verdict"] == {"band": None, "published": "not run"}


def test_a_stale_run_file_is_refused(project):
    from mnist_repro.run_files import read_runs

    path = project / "metrics/runs/lr_scheduler/seed_2.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "seed": 7}))
    with pytest.raises(InputFileError, match=r"seed_2.json: holds \{'seed': 7\}.*seed@lr_scheduler-2"):
        read_runs(load_params(project / "params.yaml"), project / "metrics/runs")
    path.write_text(json.dumps({**json.loads(path.read_text()), "seed": 2, "test_images": 200}))
    with pytest.raises(InputFileError, match="its seeds differ"):
        read_runs(load_params(project / "params.yaml"), project / "metrics/runs")


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["table"]["dropout"].update(best_test="98.64"), "table.dropout.best_test: expected a percentage"),
    (lambda r: r["table"]["dropout"].pop("params"), "table.dropout.params: missing"),
    (lambda r: r["logs"].pop("dropout"), "table and logs must be objects naming the same variants"),
    (lambda r: r["logs"]["dropout"].pop(3), r"logs.dropout\[3\]: epoch 5, expected 4"),
])
def test_a_malformed_reference_is_one_line(tmp_path, repo_root, edit, message):
    raw = json.loads((repo_root / "reference/published.json").read_text())
    edit(raw)
    (tmp_path / "published.json").write_text(json.dumps(raw))
    with pytest.raises(InputFileError, match=message) as info:
        load_reference(tmp_path / "published.json")
    assert "\n" not in str(info.value)


def test_the_reference_matches_the_published_table(repo_root):
    """The seven rows of the write-up's table, as published (basic_setup's "6.3M" made exact)."""
    reference = load_reference(repo_root / "reference/published.json")
    table = {name: (r.params, r.best_train, r.best_test) for name, r in reference.runs.items()}
    assert table == {"basic_setup": (6379786, 99.93, 99.28), "skeleton": (4572, 98.22, 98.43),
                     "batch_norm": (5088, 99.03, 99.04), "dropout": (5088, 97.94, 98.64),
                     "fc_after_gap": (6124, 99.07, 99.22), "augmentation": (6124, 97.61, 99.32),
                     "lr_scheduler": (6720, 99.43, 99.53)}
    assert all(len(r.log) == 15 for r in reference.runs.values()) and reference.target_acc == 99.4


# --- the statistics on hand-worked numbers ------------------------------------------------------

def test_the_verdict_rule_by_hand():
    # best 99.50, 99.40, 99.30: mean 99.40, sample sd sqrt((0.01 + 0 + 0.01) / 2) = 0.1.
    # se at 99.53 on 10,000 images: 100 * sqrt(0.9953 * 0.0047 / 10000) = 0.068395.
    # half-width 2 * sqrt(0.01 + 0.0046779) = 2 * 0.1211524 = 0.242305: band [99.1577, 99.6423].
    b = band([99.50, 99.40, 99.30], 99.53, 10_000)
    assert (b.mean, b.sd, b.se) == (pytest.approx(99.40), pytest.approx(0.1), pytest.approx(0.068395, abs=1e-6))
    assert b.half_width == pytest.approx(0.242305, abs=1e-6)
    assert b.verdict(99.53) == "within" and b.verdict(99.64) == "within"
    assert b.verdict(99.65) == "above" and b.verdict(99.15) == "below"


def test_one_seed_band_is_two_binomial_standard_errors():
    b = band([97.96], 98.43, 10_000)
    se = 100 * math.sqrt(0.9843 * 0.0157 / 10_000)  # 0.12431
    assert b.sd == 0.0 and b.se == pytest.approx(se) and b.half_width == pytest.approx(2 * se)
    assert binomial_se(50.0, 100) == pytest.approx(5.0)  # sqrt(0.25 / 100) = 0.05


def test_describe_and_mean_curve():
    assert describe([99.5, 99.4, 99.3]) == {"n": 3, "mean": pytest.approx(99.4), "sd": pytest.approx(0.1),
                                            "min": 99.3, "max": 99.5}
    curves = [[{"epoch": 1, "test_acc": 90.0}, {"epoch": 2, "test_acc": 98.0}],
              [{"epoch": 1, "test_acc": 94.0}, {"epoch": 2, "test_acc": 99.0}]]
    assert mean_curve(curves) == [{"epoch": 1, "mean": 92.0, "min": 90.0, "max": 94.0},
                                  {"epoch": 2, "mean": 98.5, "min": 98.0, "max": 99.0}]


def test_largest_gap_after_epoch_3_on_the_committed_skeleton(committed_results, repo_root):
    ours = mean_curve([committed_results["metrics/history/skeleton/seed_1.json"]])
    published = load_reference(repo_root / "reference/published.json").get("skeleton").log
    gap = largest_gap(ours, published)
    # epochs 4-15, ours - published: -1.00, -1.19, +0.46, -0.84, ...: the largest is epoch 5
    assert (gap.epoch, gap.ours, gap.published) == (5, 95.6, 96.79)
    assert gap.difference == pytest.approx(-1.19)
    # Both skeleton runs sit at chance for their first two epochs.
    assert stalled_epochs([e["test_acc"] for e in published]) == 2
    assert stalled_epochs([e["mean"] for e in ours]) == 2


@pytest.mark.parametrize("published, code, cause", [
    (99.80, 99.48, "the published run's own noise"),  # the published code here lands with ours
    (99.80, 99.80, "a bug in ours"),                   # ... lands with the published run
    (99.80, 99.10, "undecided"),                       # ... with neither
    (99.63, 99.55, "undecided"),                       # ... close to both
])
def test_which_side_is_off(published, code, cause):
    b = band([99.47, 99.43, 99.51, 99.43, 99.52], published, 10_000)
    assert b.verdict(published) == "above"
    assert attribute(b, published, code).cause == cause
