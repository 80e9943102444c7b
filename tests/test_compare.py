"""The compare stage and the statistics behind its verdicts, on the committed 15-epoch runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import yaml
from support.projects import DVC, load_stage, sh

from mnist_repro.core.config import load_params
from mnist_repro.core.errors import InputFileError
from mnist_repro.compare.reference import load_reference
from mnist_repro.compare.stats import largest_gap, mean_curve, stalled_epochs

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

KEYS = {"best": {"also", "mean", "pi", "pub", "v", "wu"}, "fin": {"mean", "pi", "pub", "v"}, "n": None,
        "params": None, "pp": {"best"}}


def test_one_row_per_variant_in_params_order_with_the_published_logs(compared):
    rows = rows_of(compared)
    assert list(rows) == STEPS  # file names sort in params.yaml order, as `dvc metrics show` lists them
    reference = load_reference(compared / "reference/published.json")
    for step, row in rows.items():
        name = step.split("_", 1)[1]
        pub = reference.get(name)
        run = json.loads((compared / f"metrics/runs/{name}/seed_1.json").read_text())
        assert {k: set(v) if isinstance(v, dict) else None for k, v in row.items()} == KEYS
        # one source per row: the notebook's own log; the write-up's best test in its one column
        assert row["best"]["pub"] == max(e["test_acc"] for e in pub.log) and row["fin"]["pub"] == pub.log[-1]["test_acc"]
        assert row["best"]["wu"] == pub.best_test and row["params"] == run["params"]
        assert "wall_seconds" not in json.dumps(row)
    # dropout: the write-up's 98.64 is its log's final epoch; the log's best is 98.76
    assert (rows["4_dropout"]["best"]["pub"], rows["4_dropout"]["best"]["wu"]) == (98.76, 98.64)
    # Only lr_scheduler has extra seeds configured; the rest have one run: too few for an interval.
    assert [r["n"] for r in rows.values()] == [1, 1, 1, 1, 1, 1, 5]
    for row in list(rows.values())[:6]:
        assert row["best"]["v"] == row["fin"]["v"] == "too few runs"
        assert row["best"]["pi"] is row["best"]["also"] is row["fin"]["pi"] is None


def test_verdicts_of_the_committed_runs_by_hand(compared):
    row = rows_of(compared)["7_lr_scheduler"]
    # best 99.47, 99.43, 99.51, 99.43, 99.52: mean 99.472, SD 0.04266; ± 2.7764 · 0.04266 · sqrt(1.2)
    # = 0.1298: [99.342, 99.602] holds the log's best 99.53 and no other variant's published best
    # (augmentation 99.32 and basic_setup 99.28 are below it).
    assert row["best"] == {"mean": 99.47, "pi": 0.13, "pub": 99.53, "v": "consistent", "also": 0, "wu": 99.53}
    # final 99.47, 99.41, 99.45, 99.43, 99.52: mean 99.456, SD 0.04219, ± 0.1283: [99.328, 99.584] holds 99.50.
    assert row["fin"] == {"mean": 99.46, "pi": 0.13, "pub": 99.5, "v": "consistent"}
    # the fixture's published-path rerun is read, but it is one seed: no difference to test, no verdict
    assert row["pp"] == {"best": None}


def metrics_show(table_dir, tmp_path) -> list[str]:
    """`dvc metrics show --md` of a copy of table_dir, as a reader of the project sees it."""
    shutil.copytree(table_dir, tmp_path / "metrics/table")
    (tmp_path / "dvc.yaml").write_text("metrics:\n  - metrics/table\n")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, env=env)
    return subprocess.run(["dvc", "metrics", "show", "--md"], cwd=tmp_path, check=True, env=env,
                          capture_output=True, text=True).stdout.strip().splitlines()


def add_published_path(root, seeds, shift, margin):
    """Published-path reruns of lr_scheduler in the published_path layout (dvc.yaml): our run files of the same seeds
    with data_path "published" and best test moved by shift[seed] (real-shaped, made-up accuracies)."""
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["published_path"].update(seeds=list(seeds), margin=margin)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for s in seeds:
        run = json.loads((root / f"metrics/runs/lr_scheduler/seed_{s}.json").read_text())
        out = root / f"metrics/published_path/runs/lr_scheduler/seed_{s}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**run, "data_path": "published", "best_test_acc": run["best_test_acc"] + shift[s]}))
        history = root / f"metrics/published_path/history/lr_scheduler/seed_{s}.json"
        history.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / f"metrics/history/lr_scheduler/seed_{s}.json", history)


def test_the_published_path_over_the_same_seeds_by_hand(project, run_stage, compare_argv):
    # ours best 99.47, 99.43, 99.51, 99.43, 99.52; the published path 99.45, 99.48, 99.50, 99.40, 99.49:
    # difference of means 0.008, se 0.02627, Welch df 7.98, 90% CI ± 1.8603 · 0.02627 = [-0.041, 0.057]:
    # inside ±0.15, equivalent; inside ±0.03 it is not, and the 95% CI holds 0: inconclusive.
    shift = {1: -0.02, 2: 0.05, 3: -0.01, 4: -0.03, 5: -0.03}
    add_published_path(project, range(1, 6), shift, 0.15)
    run_stage("compare", compare_argv(project))
    assert rows_of(project)["7_lr_scheduler"]["pp"] == {"best": "equivalent"}
    add_published_path(project, range(1, 6), shift, 0.03)
    run_stage("compare", compare_argv(project))
    assert rows_of(project)["7_lr_scheduler"]["pp"] == {"best": "inconclusive"}


def test_dvc_metrics_show_fits_200_columns_with_its_widest_values(project, run_stage, compare_argv, tmp_path):
    """The widest words every column can hold (too few runs, not run, inconclusive), the
    longest path: `dvc metrics show --md` stays within 200 characters and 20 columns."""
    add_published_path(project, range(1, 6), {s: 0.0 for s in range(1, 6)}, 0.001)
    (project / "metrics/runs/skeleton/seed_1.json").unlink()  # "not run"
    run_stage("compare", compare_argv(project))
    out = metrics_show(project / "metrics/table", tmp_path / "shown")
    header = [c.strip() for c in out[0].strip("|").split("|")]
    assert header == ["Path", "best.also", "best.mean", "best.pi", "best.pub", "best.v", "best.wu", "fin.mean",
                      "fin.pi", "fin.pub", "fin.v", "n", "params", "pp.best"]
    assert [line.split("|")[1].strip() for line in out[2:]] == [f"metrics/table/{s}.json" for s in STEPS]
    cells = [dict(zip(header, [c.strip() for c in line.strip("|").split("|")])) for line in out[2:]]
    assert {c["best.v"] for c in cells} == {"too few runs", "not run", "consistent"}
    assert cells[-1]["pp.best"] == "inconclusive"
    assert len(header) <= 20 and max(map(len, out)) <= 200, max(map(len, out))


def test_a_variant_without_published_numbers_has_nulls_not_a_verdict(project, run_stage, compare_argv):
    ref = json.loads((project / "reference/published.json").read_text())
    del ref["table"]["skeleton"], ref["logs"]["skeleton"]
    (project / "reference/published.json").write_text(json.dumps(ref))
    run_stage("compare", compare_argv(project))
    row = rows_of(project)["2_skeleton"]
    assert row["best"] == {"mean": 97.96, "pi": None, "pub": None, "v": None, "also": None, "wu": None}
    assert row["fin"]["v"] is None and row["params"] == 4572


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
    # Some published-path seeds run, one not: a result from the seeds that happen to be done is refused.
    ("metrics/published_path/runs/lr_scheduler/seed_2.json", "dvc repro published_path@lr_scheduler-2"),
])
def test_a_missing_configured_file_is_one_line_naming_its_stage(project, run_stage, compare_argv, capsys,
                                                               missing, stage):
    add_published_path(project, range(1, 6), {s: 0.0 for s in range(1, 6)}, 0.15)
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
    compare = load_stage("compare")
    # the header, a row per run variant, the not-run variant's line, the legend
    assert len(out) == 1 + 6 + 1 + len(compare.LEGEND) and out[-len(compare.LEGEND):] == list(compare.LEGEND)
    assert out[-len(compare.LEGEND) - 1] == (f"basic_setup: not run yet ({project}/metrics/runs/basic_setup/"
                                             "seed_1.json missing): dvc repro train@basic_setup")
    assert sum("not run" in line for line in out) == 1 and not any(line.startswith("basic_setup ") for line in out)
    rows = rows_of(project)
    # The published side as for a run variant (the reference file's basic_setup entry); every "ours" null.
    pub = load_reference(project / "reference/published.json").get("basic_setup")
    assert rows["1_basic_setup"] == {
        "best": {"mean": None, "pi": None, "pub": pub.log_best, "v": "not run", "also": None, "wu": 99.28},
        "fin": {"mean": None, "pi": None, "pub": pub.log[-1]["test_acc"], "v": "not run"},
        "n": 0, "params": None, "pp": {"best": None}}
    assert {k: v for k, v in rows.items() if k != "1_basic_setup"} == {
        k: v for k, v in rows_of(compared).items() if k != "1_basic_setup"}
    # `dvc metrics show --md` lists the row with "-" for the nulls (not "None", not a dropped column).
    shown = metrics_show(project / "metrics/table", tmp_path / "shown")  # project is tmp_path itself
    header = [c.strip() for c in shown[0].strip("|").split("|")]
    row = dict(zip(header, [c.strip() for c in shown[2].strip("|").split("|")]))
    assert row["Path"] == "metrics/table/1_basic_setup.json"
    assert row["best.mean"] == row["best.pi"] == row["params"] == "-"
    assert row["n"] == "0" and row["best.v"] == row["fin.v"] == "not run" and row["best.wu"] == "99.28"


def test_extra_seeds_without_the_main_run_are_ignored_and_said_so(project, run_stage, compare_argv, capsys):
    (project / "metrics/runs/lr_scheduler/seed_1.json").unlink()
    (project / "metrics/runs/lr_scheduler/seed_3.json").unlink()  # no longer an error: nothing of it is read
    run_stage("compare", compare_argv(project))
    out = capsys.readouterr().out.splitlines()
    assert out[-len(load_stage("compare").LEGEND) - 1] == (
        f"lr_scheduler: not run yet ({project}/metrics/runs/lr_scheduler/seed_1.json missing; "
        "extra seeds 2, 4, 5 present, ignored until it exists): dvc repro train@lr_scheduler")
    row = rows_of(project)["7_lr_scheduler"]
    assert row["n"] == 0 and row["best"]["mean"] is None and row["best"]["v"] == "not run"


def test_a_stale_run_file_is_refused(project):
    from mnist_repro.compare.run_files import read_runs

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


# --- curve facts --------------------------------------------------------------------------

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


# --- the README's table is the committed table ----------------------------------------------------

README_TABLE = ("<!-- table: dvc metrics show --md -->", "<!-- /table -->")


def dvc_in(root, *args: str) -> str:
    """stdout of `dvc <args>` in root (the committed checkout)."""
    return sh([*DVC, *args], root, {**os.environ, "DVC_NO_ANALYTICS": "1"}).stdout


def test_the_readme_table_is_dvc_metrics_show(repo_root):
    """The README shows `dvc metrics show --md` of the committed table, unedited, within 200 columns."""
    pytest.importorskip("dvc", reason="dvc is not installed, so `dvc metrics show --md` cannot run")
    text = (repo_root / "README.md").read_text()
    start, end = README_TABLE
    assert start in text and end in text, f"README.md lacks the lines {start} and {end} around its table"
    shown = dvc_in(repo_root, "metrics", "show", "--md").strip()
    assert text.split(start, 1)[1].split(end, 1)[0].strip() == shown, (
        "README.md's table differs from `dvc metrics show --md`: paste its output between the markers")
    lines = shown.splitlines()
    assert max(map(len, lines)) <= 200 and len(lines[0].strip("|").split("|")) <= 20


def test_the_committed_lock_records_only_the_pipelines_stages(repo_root, repo_stages):
    """dvc.lock is the provenance of every committed result: an entry of a stage dvc.yaml no longer
    defines (DVC keeps it when a stage is renamed or removed) would record a run no command makes."""
    listed = list(repo_stages)  # the stages `dvc stage list --all` names
    safe = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, where PyYAML has it: the lock is ~400 KB
    locked = yaml.load((repo_root / "dvc.lock").read_text(), Loader=safe)["stages"]
    assert sorted(set(locked) - set(listed)) == [], "dvc.lock records stages dvc.yaml does not define: remove them"
