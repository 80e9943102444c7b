"""The report stage, rendered from the committed 15-epoch runs and the compare stage's table."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from mnist_repro.report.figures import zoom_limits

VARIANTS = ["basic_setup", "skeleton", "batch_norm", "dropout", "fc_after_gap", "augmentation", "lr_scheduler"]
FIGURES = {f"{v}_vs_published.png" for v in VARIANTS} | {"test_accuracy_overlay.png", "misclassified_lr_scheduler.png"}


@pytest.fixture(scope="module")
def argv(report_argv):
    """The report stage's arguments: conftest's, with the search records' directory when given."""
    return lambda root, search=None: [*report_argv(root), *(["--search", search] if search else [])]


@pytest.fixture(scope="module")
def built(tmp_path_factory, make_results_project, run_stage, compare_argv, argv) -> Path:
    """The results project's table and report, the report with --provenance as dvc.yaml runs it."""
    root = make_results_project(tmp_path_factory.mktemp("report"))
    run_stage("compare", compare_argv(root))
    run_stage("report", [*argv(root), "--provenance", root / "metrics/provenance.json"])
    return root


@pytest.fixture(scope="module")
def report(built) -> str:
    return (built / "metrics/report.md").read_text()


def table_after(markdown: str, heading: str) -> list[list[str]]:
    """The cells of the first markdown table after a heading, header row first."""
    lines = markdown.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return [rows[0]] + rows[2:]


def test_side_by_side_has_one_row_per_variant_with_n_interval_and_verdicts(built, report):
    header, *rows = table_after(report, "## Side by side")
    assert [r[0] for r in rows] == VARIANTS
    col = {name: header.index(name) for name in header}  # the first of a repeated name: best test's
    for name, cells in zip(VARIANTS, rows):
        row = json.loads(next((built / "metrics/table").glob(f"*_{name}.json")).read_text())
        assert cells[col["n"]] == str(row["n"]) and cells[col["verdict"]] == row["best"]["v"]
        assert cells[col["published (log)"]] == f"{row['best']['pub']:.2f}"
    lr = dict(zip(header, rows[-1]))
    # best 99.47, 99.43, 99.51, 99.43, 99.52: 99.472 ± 0.1298; final 99.47, 99.41, 99.45, 99.43, 99.52: 99.456 ± 0.1283
    assert lr["Best test: ours, mean [95% PI]"] == "99.47 [99.34, 99.60]"
    assert lr["Final test: ours, mean [95% PI]"] == "99.46 [99.33, 99.58]"
    assert rows[-1][header.index("verdict", col["verdict"] + 1)] == "consistent"
    assert lr["Best train: ours mean / published (log)"].endswith("/ 98.43")  # the log's, not the write-up's 99.43
    assert dict(zip(header, rows[1]))["Best test: ours, mean [95% PI]"] == "97.96 (n = 1, no interval)"


def test_the_rule_is_stated(report):
    assert "mean ± t(0.975, n − 1) · SD · sqrt(1 + 1/n)" in report and "t(0.975, 4) = 2.7764" in report
    assert "not rejected, not proven equal" in report and "*too few runs*" in report
    assert "binomial" in report and "band" not in report.lower()


def test_power_lists_what_each_interval_also_contains(report):
    header, *rows = table_after(report, "### What each verdict can tell apart")
    # only lr_scheduler has 3 runs or more: best [99.34, 99.60] and final [99.33, 99.58]; no other
    # variant's published value is inside (augmentation's 99.32 is the nearest). Detectable shift at 80%
    # power, n = 5: 4.120034 · SD (stats.detectable_shift(5, 0.1) = 0.412003, test_stats), best SD 0.042661
    # -> 0.1758, final SD 0.042190 -> 0.1738
    assert rows == [["lr_scheduler", "best test", "5", "[99.34, 99.60]", "99.53", "consistent", "0.18", "0", "none"],
                    ["lr_scheduler", "final test", "5", "[99.33, 99.58]", "99.50", "consistent", "0.17", "0", "none"]]
    text = section(report, "## Side by side").split("### What each verdict can tell apart", 1)[1]
    assert "noncentral t with n − 1 df and noncentrality δ / (SD · sqrt(1 + 1/n))" in text


def test_machine_and_wall_time_come_from_the_run_files(report):
    machine = "AMD EPYC (2 cores) (cpu), 1 process on 1 machine, mixed precision no, torch 2.14.1+cu130"
    assert f"- Every run on: {machine}" in report
    header, *rows = table_after(report, "## Wall time")
    assert [r[0] for r in rows] == VARIANTS
    # lr_scheduler: seed 1 ran 454.7 s; the five seeds 454.7 + 383.5 + ... as recorded in their files
    assert rows[-1][:3] == ["lr_scheduler", "5", "7.6 min"]


def test_where_the_published_table_disagrees_with_its_own_log(report):
    section = report.split("## Where the write-up disagrees with its own logs", 1)[1].split("##", 1)[0]
    assert "`dropout`: write-up best test 98.64 (the log's final epoch); its log's best is 98.76 at epoch 12" in section
    assert "`lr_scheduler`: write-up best train 99.43; its log's best" in section and "is 98.43, used here" in section
    assert "`batch_norm`: write-up best test 99.04; its log's best is 99.03 at epoch 15" in section


def test_per_epoch_gap_after_epoch_3(report):
    header, *rows = table_after(report, "## Per-epoch gap")
    assert rows[1] == ["skeleton", "1", "5", "95.60", "96.79", "-1.19"]
    assert [r[0] for r in rows] == VARIANTS and rows[-1][1] == "5"


def test_the_report_refers_to_nothing_outside_the_project(built, report):
    links = re.findall(r"\]\(([^)]+)\)", report)
    files = [link for link in links if not link.startswith("https://")]  # the published notebooks' pages
    assert len(files) == len(FIGURES) + 3, "the figures, the reference file, the table and the run files"
    for link in files:
        target = (built / "metrics" / link).resolve()
        assert target.exists() and target.is_relative_to(built), link
    assert str(built) not in report and "shared" not in report and "/tmp" not in report


def test_figures_are_written(built):
    figures = built / "metrics/figures"
    assert {p.name for p in figures.iterdir()} == FIGURES
    for png in figures.iterdir():
        data = png.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, png.name


def test_misclassified_digits_are_the_errors_file(built, report):
    errors = json.loads((built / "metrics/errors/lr_scheduler.json").read_text())
    wrong = len(errors["misclassified"])
    assert f"misclassifies {wrong} of 10,000 test images, an accuracy of {100 - wrong / 100:.2f}%" in report
    assert "The first 25 in test-set order" in report


@pytest.fixture(scope="module")
def edited_reference(tmp_path_factory, make_results_project, run_stage, compare_argv, argv) -> Path:
    """The results project with two edits of its reference file, each read by its own test below:
    lr_scheduler's log reaching 99.80 at epoch 10 (above our [99.34, 99.60]), and no published
    numbers for skeleton (as an eighth variant would have). One table and report of both."""
    root = make_results_project(tmp_path_factory.mktemp("edited_reference"))
    ref = json.loads((root / "reference/published.json").read_text())
    ref["logs"]["lr_scheduler"][9]["test_acc"] = 99.80
    del ref["table"]["skeleton"], ref["logs"]["skeleton"]
    (root / "reference/published.json").write_text(json.dumps(ref))
    run_stage("compare", compare_argv(root))
    run_stage("report", argv(root))
    return root


def test_a_variant_outside_its_interval_gets_the_facts_of_its_epochs(edited_reference, tmp_path, run_stage, argv):
    # Had lr_scheduler's log reached 99.80 at epoch 10, it would lie above our [99.34, 99.60].
    outside = section((edited_reference / "metrics/report.md").read_text(), "## Outside the interval")
    assert "**lr_scheduler**: the published best test is above our interval" in outside
    assert outside.count("**") == 2  # the only one
    assert "- published best test 99.80; our 5 seeds: mean 99.47, interval [99.34, 99.60] (SD 0.043)" in outside
    # the fixture's published-path rerun is one seed
    assert "- the published data path has fewer than 2 seeds here: no difference to estimate" in outside
    root = tmp_path / "project"
    shutil.copytree(edited_reference, root)
    shutil.rmtree(root / "metrics/published_path")  # not run: the sentence names its stage
    run_stage("report", argv(root))
    outside = section((root / "metrics/report.md").read_text(), "## Outside the interval")
    assert ("the published data path is not rerun for `lr_scheduler` (not run yet: `dvc repro "
            "published_path@lr_scheduler-1`)") in outside


def test_a_missing_errors_file_stops_the_report_before_writing(tmp_path, make_results_project, run_stage,
                                                                compare_argv, argv, capsys):
    root = make_results_project(tmp_path)
    run_stage("compare", compare_argv(root))
    (root / "metrics/errors/lr_scheduler.json").unlink()
    with pytest.raises(SystemExit):
        run_stage("report", argv(root))
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lr_scheduler.json: missing" in err and "dvc repro train@lr_scheduler" in err
    assert not (root / "metrics/report.md").exists() and not (root / "metrics/figures").exists()


def test_a_missing_table_names_the_compare_stage(tmp_path, make_results_project, run_stage, argv, capsys):
    root = make_results_project(tmp_path)
    with pytest.raises(SystemExit):
        run_stage("report", argv(root))
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1_basic_setup.json: missing" in err and "dvc repro compare" in err


def test_zoom_keeps_the_settled_epochs_on_the_axis():
    # skeleton: epochs 1-2 at chance, 4+ from 94.52; the zoom starts at 94.5, not at 9.7
    assert zoom_limits([9.74, 86.99, 94.52, 97.96], 99.4, settled=[94.52, 97.96]) == (94.5, pytest.approx(98.16))
    # lr_scheduler: settled above 97, so 97 to just above the target
    assert zoom_limits([95.11, 99.05, 99.47], 99.4, settled=[99.05, 99.47]) == (97.0, pytest.approx(99.67))


def test_a_variant_without_published_numbers_is_shown_without_a_verdict(edited_reference):
    report = (edited_reference / "metrics/report.md").read_text()  # skeleton's published numbers removed
    header, *rows = table_after(report, "## Side by side")
    skeleton = dict(zip(header, rows[1]))
    assert skeleton["Params: ours / published"] == "4,572 / –" and skeleton["verdict"] == "–"
    assert "No verdict for `skeleton`" in report
    assert table_after(report, "## Per-epoch gap")[2] == ["skeleton", "1", "–", "–", "–", "–"]


def test_every_seed_is_listed(report):
    header, *rows = table_after(report, "## Every seed")
    assert [r[0] for r in rows] == VARIANTS
    assert rows[-1] == ["lr_scheduler", "5", "1, 2, 3, 4, 5", "99.47, 99.43, 99.51, 99.43, 99.52",
                        "99.47, 99.41, 99.45, 99.43, 99.52", "5 of 5"]
    assert rows[1][-1] == "0 of 1"


# --- the long-form curves for `dvc plots` ----------------------------------------------------

CURVE_KEYS = ["variant", "epoch", "test_acc", "test_loss", "train_acc", "train_loss", "ours_mean", "ours_min",
              "ours_max", "published", "published_path"]


def curves_of(root: Path) -> list[dict]:
    return json.loads((root / "metrics/curves.json").read_text())


def test_curves_are_one_row_per_variant_and_epoch(built, repo_root):
    rows = curves_of(built)
    assert [(r["variant"], r["epoch"]) for r in rows] == [(v, e) for v in VARIANTS for e in range(1, 16)]
    assert all(list(r) == CURVE_KEYS for r in rows)
    log = json.loads((repo_root / "reference/published.json").read_text())["logs"]
    seeds = [json.loads((built / f"metrics/history/lr_scheduler/seed_{s}.json").read_text()) for s in range(1, 6)]
    # the published path's mean over its seeds: the fixture's one rerun (seed 1)
    path = json.loads((built / "metrics/published_path/history/lr_scheduler/seed_1.json").read_text())
    for i, row in enumerate(r for r in rows if r["variant"] == "lr_scheduler"):
        accs = [h[i]["test_acc"] for h in seeds]
        assert row["test_acc"] == round(seeds[0][i]["test_acc"], 4) and row["train_loss"] == round(
            seeds[0][i]["train_loss"], 4)
        assert (row["ours_mean"], row["ours_min"], row["ours_max"]) == (
            round(sum(accs) / 5, 4), round(min(accs), 4), round(max(accs), 4))
        assert row["published"] == log["lr_scheduler"][i]["test_acc"]
        assert row["published_path"] == round(path[i]["test_acc"], 4)
    assert all(r["published_path"] is None for r in rows if r["variant"] != "lr_scheduler")  # not configured


# --- variants not run yet -------------------------------------------------------------------------

NOT_RUN = {"basic_setup": "not run yet: `dvc repro train@basic_setup`",
           "lr_scheduler": "not run yet: `dvc repro train@lr_scheduler`"}


@pytest.fixture(scope="module")
def unrun(built, tmp_path_factory, run_stage, compare_argv, argv) -> Path:
    """The first and the last variant without their main run, rendered over a copy of the complete
    report (its outputs in place, as in the checkout). lr_scheduler keeps its extra seeds, histories,
    errors file and published-path rerun: none of its own runs is used without the main one."""
    root = tmp_path_factory.mktemp("unrun") / "project"
    shutil.copytree(built, root)
    for name in NOT_RUN:
        (root / f"metrics/runs/{name}/seed_1.json").unlink()
        (root / f"metrics/history/{name}/seed_1.json").unlink()
    run_stage("compare", compare_argv(root))
    run_stage("report", argv(root))
    return root


@pytest.fixture(scope="module")
def unrun_report(unrun) -> str:
    return (unrun / "metrics/report.md").read_text()


def test_the_intro_and_the_runs_count_the_variants_not_run(unrun_report):
    assert ("**2 of 7 variants not run yet**: `basic_setup` (`dvc repro train@basic_setup`), `lr_scheduler` "
            "(`dvc repro train@lr_scheduler`).") in unrun_report.split("## The runs", 1)[0]
    assert "- 5 of 7 variants run (2 not run yet), 5 runs; 15 epochs on 60,000 training and 10,000 test" in unrun_report
    assert not re.search(r"\bNone\b|\bnan\b", unrun_report)


def test_a_variant_not_run_is_in_every_table_with_its_stage(unrun_report):
    header, *rows = table_after(unrun_report, "## Side by side")
    assert [r[0] for r in rows] == VARIANTS
    basic = dict(zip(header, rows[0]))
    assert basic["n"] == "0" and basic["Params: ours / published"] == "– / 6,379,786"
    assert basic["Best test: ours, mean [95% PI]"] == NOT_RUN["basic_setup"] and basic["verdict"] == "not run"
    assert basic["published (log)"] == "99.28" and basic["Best epoch: ours (seed 1) / published"] == "– / 15"
    assert dict(zip(header, rows[-1]))["Best test: ours, mean [95% PI]"] == NOT_RUN["lr_scheduler"]
    for heading, cells in (("## Every seed", lambda how: ["0", how, "–", "–", "–"]),
                           ("## Per-epoch gap", lambda how: ["0", "–", how, "–", "–"]),
                           ("## Wall time", lambda how: ["0", how, "–", "–"])):
        _, *rows = table_after(unrun_report, heading)
        assert [r[0] for r in rows] == VARIANTS, heading
        assert rows[0][1:] == cells(NOT_RUN["basic_setup"]), heading
        assert rows[-1][1:] == cells(NOT_RUN["lr_scheduler"]), heading


def test_totals_count_only_the_runs_that_exist(unrun_report):
    # skeleton 164.6 + batch_norm 266.1 + dropout 360.7 + fc_after_gap 360.7 + augmentation 409.7 = 1561.8 s
    assert "In total 26.0 min over 5 runs of 5 variants (2 not run yet): the table one run after another." \
        in unrun_report
    # two slots, longest first: 409.7 | 360.7, then 360.7 joins the second (721.4), 266.1 the first (675.8),
    # 164.6 the first again (840.4 s)
    assert "would take about 14.0 min, longest runs first" in unrun_report
    assert "; here t(0.975" not in unrun_report  # no variant left with 3 runs: lr_scheduler's extra seeds are not used


def test_a_variant_not_run_gets_the_published_curve_alone_and_no_misclassified_grid(unrun, unrun_report):
    # The complete earlier report's misclassified grid is removed with its variant's main run.
    assert {p.name for p in (unrun / "metrics/figures").iterdir()} == FIGURES - {"misclassified_lr_scheduler.png"}
    section = unrun_report.split("### basic_setup", 1)[1].split("###", 1)[0]
    assert f"`basic_setup` is {NOT_RUN['basic_setup']}; the published run alone:" in section
    assert "](figures/basic_setup_vs_published.png)" in section
    misclassified = unrun_report.split("## Misclassified test images: lr_scheduler", 1)[1].split("##", 1)[0]
    assert misclassified.strip() == (f"`lr_scheduler` is {NOT_RUN['lr_scheduler']}; its misclassified test images "
                                     "are shown once it has run.")
    assert "### `basic_setup` (variant: basic_setup)" in unrun_report  # its model card stays
    assert "### `lr_scheduler` (variant: lr_scheduler)" in unrun_report
    links = [link for link in re.findall(r"\]\(([^)]+)\)", unrun_report) if not link.startswith("https://")]
    assert len(links) == len(FIGURES) - 1 + 3
    assert all((unrun / "metrics" / link).exists() for link in links)


def test_the_curves_of_a_variant_not_run_are_the_published_ones(unrun, repo_root):
    log = json.loads((repo_root / "reference/published.json").read_text())["logs"]
    rows = [r for r in curves_of(unrun) if r["variant"] == "basic_setup"]
    assert rows == [{"variant": "basic_setup", "epoch": e["epoch"], **{k: None for k in CURVE_KEYS[2:9]},
                     "published": e["test_acc"], "published_path": None} for e in log["basic_setup"]]


def test_a_table_older_than_the_runs_names_the_compare_stage(tmp_path, make_results_project, run_stage,
                                                             compare_argv, argv, capsys):
    root = make_results_project(tmp_path)
    run_stage("compare", compare_argv(root))
    (root / "metrics/runs/basic_setup/seed_1.json").unlink()  # the table still has its row as run
    with pytest.raises(SystemExit):
        run_stage("report", argv(root))
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1_basic_setup.json: counts 1 runs of basic_setup, the run files 0" in err
    assert "dvc repro compare" in err and not (root / "metrics/report.md").exists()


# --- the published data path over seeds, the confirmation and the earlier test-set uses -------------

CONFIRMATION = {"variant": "under_5k", "seeds": [101, 102, 103], "min_final_test_mean": 99.40}
CONFIRMED_FINALS = {101: 99.45, 102: 99.38, 103: 99.52}   # made up, in real-shaped run files
PATH_BEST_SHIFT = {1: -0.02, 2: 0.05, 3: -0.01, 4: -0.03, 5: -0.03}


def copy_run(src_runs: Path, src_history: Path, dest_runs: Path, dest_history: Path, **changes) -> None:
    dest_runs.parent.mkdir(parents=True, exist_ok=True)
    dest_history.parent.mkdir(parents=True, exist_ok=True)
    dest_runs.write_text(json.dumps({**json.loads(src_runs.read_text()), **changes}))
    shutil.copy(src_history, dest_history)


@pytest.fixture(scope="module")
def full(tmp_path_factory, make_results_project, repo_root, run_stage, compare_argv, argv) -> Path:
    """The results project plus under_5k's five committed runs, its search record and the earlier
    test-set uses (the repository's), a confirmation configured with three made-up runs, and
    published-path reruns of lr_scheduler over seeds 1-5 (our run files, best test shifted)."""
    root = make_results_project(tmp_path_factory.mktemp("full"))
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["variants"]["under_5k"] = yaml.safe_load((repo_root / "params.yaml").read_text())["variants"]["under_5k"]
    raw["seeds"]["variants"].append("under_5k")
    raw["published_path"].update(seeds=[1, 2, 3, 4, 5], margin=0.15)
    raw["confirmation"] = CONFIRMATION
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for s in range(1, 6):
        copy_run(repo_root / f"metrics/runs/under_5k/seed_{s}.json", repo_root / f"metrics/history/under_5k/seed_{s}.json",
                 root / f"metrics/runs/under_5k/seed_{s}.json", root / f"metrics/history/under_5k/seed_{s}.json")
        run = json.loads((root / f"metrics/runs/lr_scheduler/seed_{s}.json").read_text())
        copy_run(root / f"metrics/runs/lr_scheduler/seed_{s}.json", root / f"metrics/history/lr_scheduler/seed_{s}.json",
                 root / f"metrics/published_path/runs/lr_scheduler/seed_{s}.json",
                 root / f"metrics/published_path/history/lr_scheduler/seed_{s}.json",
                 data_path="published", best_test_acc=round(run["best_test_acc"] + PATH_BEST_SHIFT[s], 2))
    shutil.copy(repo_root / "metrics/errors/under_5k.json", root / "metrics/errors/under_5k.json")
    shutil.copytree(repo_root / "metrics/search", root / "metrics/search")
    for s, final in CONFIRMED_FINALS.items():
        copy_run(repo_root / f"metrics/runs/under_5k/seed_{s - 100}.json",
                 repo_root / f"metrics/history/under_5k/seed_{s - 100}.json",
                 root / f"metrics/confirmation/runs/seed_{s}.json", root / f"metrics/confirmation/history/seed_{s}.json",
                 seed=s, final_test_acc=final)
    run_stage("compare", compare_argv(root))
    run_stage("report", argv(root, search=root / "metrics/search"))
    return root


@pytest.fixture(scope="module")
def full_report(full) -> str:
    return (full / "metrics/report.md").read_text()


def section(report: str, heading: str) -> str:
    return report.split(heading + "\n", 1)[1].split("\n## ", 1)[0]


def test_the_published_path_over_seeds_by_hand(full, full_report):
    text = section(full_report, "## Our data path against the published data path")
    assert "margin ±0.15" in text and "*equivalent* when the 90% CI lies inside ±0.15" in text
    header, *rows = table_after(full_report, "## Our data path against the published data path")
    best = dict(zip(header, rows[0]))
    # ours 99.47, 99.43, 99.51, 99.43, 99.52; published path 99.45, 99.48, 99.50, 99.40, 99.49:
    # +0.008, se 0.02627, Welch df 7.98; 95% CI ± 2.3073 · 0.02627 = [-0.05, +0.07]; 90% [-0.04, +0.06]
    assert best == {"Variant": "lr_scheduler", "Metric": "best test", "Seeds": "1, 2, 3, 4, 5",
                    "Ours per seed": "99.47, 99.43, 99.51, 99.43, 99.52",
                    "Published path per seed": "99.45, 99.48, 99.50, 99.40, 99.49", "Difference": "+0.01",
                    "95% CI": "[-0.05, +0.07]", "90% CI": "[-0.04, +0.06]", "df": "8.0", "Verdict": "equivalent"}
    # the final epochs are the same files unchanged: a difference of exactly 0 with the same spreads
    assert dict(zip(header, rows[1]))["Difference"] == "+0.00"
    table = json.loads((full / "metrics/table/7_lr_scheduler.json").read_text())
    assert table["pp"] == {"best": "equivalent"}
    assert {r["published_path"] for r in curves_of(full) if r["variant"] == "lr_scheduler"} != {None}


def test_the_confirmation_is_reported_with_both_earlier_uses(full_report):
    text = section(full_report, "## Confirmation: under_5k")
    assert "trained with seeds 101, 102, 103 and scored on the same test set" in text
    assert "the mean final-epoch test accuracy over those seeds is at least 99.40%" in text
    assert "It shows whether the result repeats across seeds. It cannot show that the design generalises" in text
    # the project has no git history: when its parts were fixed is not stated, and the section says why
    assert "- the seeds (`confirmation.seeds`): not known here (no git history" in text
    # the first design's mean final, 99.42 (the five finals below), meets a mean criterion of 99.40
    assert ("by it, 1. first design (`cd54f9d`, c8-8-12-12-16, mean final 99.42), a design the search replaced, "
            "would have passed too.") in text
    # finals 99.45, 99.38, 99.52: mean 99.45, SD 0.07; PI low 99.45 − 4.3027 · 0.07 · sqrt(4/3) = 99.10
    assert ("**Outcome: criterion met**: mean final test 99.45% (SD 0.070) over 3 seeds, prediction interval's "
            "lower end 99.10, 2 of 3 seeds at 99.40% or above.") in text
    header, *rows = table_after(full_report, "## Confirmation: under_5k")
    assert [r[:2] for r in rows] == [["1. first design", "`cd54f9d`"],
                                     ["2. second design (the search's new choice)", "`5d235eb`"],
                                     ["3. confirmation (`confirm@<seed>`)", "–"]]
    first = dict(zip(header, rows[0]))
    # the first design's five test runs, as committed at cd54f9d: the lowest final is 99.33
    assert first["Final test per seed"] == "99.36, 99.51, 99.48, 99.33, 99.40" and first["Final ≥ 99.40"] == "3 of 5"
    assert first["Model (params)"] == "c8-8-12-12-16 (4,808)"
    assert dict(zip(header, rows[2]))["Final test per seed"] == "99.45, 99.38, 99.52"


def test_the_search_section_states_the_test_set_uses_and_what_one_change_did(full_report):
    text = section(full_report, "## Design search: under_5k")
    assert "never on the test set" not in full_report
    assert "2 earlier designs were run on it before the confirmation" in text
    header, *rows = table_after(full_report, "One change at a time")
    # Adam's peak lr 0.003 -> 0.01 on the compact model: 99.137 -> 99.357 on 10,000 validation images
    assert ["lr", "0.003", "0.01", "10,000", "99.137", "99.357", "+0.220"] in rows


def test_a_confirmation_not_run_yet_says_the_command(full, tmp_path, run_stage, compare_argv, argv):
    root = tmp_path / "project"
    shutil.copytree(full, root)
    shutil.rmtree(root / "metrics/confirmation")
    run_stage("report", argv(root, search=root / "metrics/search"))
    text = section((root / "metrics/report.md").read_text(), "## Confirmation: under_5k")
    assert ("**Outcome: not run yet: `dvc repro confirm` (stages confirm@101 ... confirm@103, 3 runs of "
            "under_5k).**") in text
    assert "1. first design" in text and "3. confirmation" not in text


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("uses"), "lacks uses"),
    (lambda r: r["uses"][0]["runs"][1].pop("final_test_acc"), "entries need seed, best_test_acc and final_test_acc"),
])
def test_a_malformed_test_set_uses_record_is_one_line(full, tmp_path, edit, message):
    from mnist_repro.core.errors import InputFileError
    from mnist_repro.compare.run_files import read_test_set_uses

    raw = json.loads((full / "metrics/search/test_set_uses.json").read_text())
    edit(raw)
    (tmp_path / "test_set_uses.json").write_text(json.dumps(raw))
    with pytest.raises(InputFileError, match=message) as info:
        read_test_set_uses(tmp_path)
    assert "\n" not in str(info.value) and "research/test_set_uses.py" in str(info.value)


def test_the_committed_test_set_uses_are_what_git_history_holds(repo_root, tmp_path):
    """metrics/search/test_set_uses.json is research/test_set_uses.py's output from the commits it names."""
    import subprocess
    import sys

    if subprocess.run(["git", "cat-file", "-e", "cd54f9d^{commit}"], cwd=repo_root, capture_output=True).returncode:
        pytest.skip("this checkout lacks commit cd54f9d (a shallow clone): the earlier test uses cannot be re-read")
    out = tmp_path / "test_set_uses.json"
    subprocess.run([sys.executable, "research/test_set_uses.py", "--out", out], cwd=repo_root, check=True,
                   capture_output=True)
    assert json.loads(out.read_text()) == json.loads((repo_root / "metrics/search/test_set_uses.json").read_text())


def test_the_cross_variant_pattern_by_hand(repo_root):
    """Three variants, our three seeds each at published final − d + (−0.1, 0, +0.1): means published − d,
    SD 0.1, so every difference d has variance 0.1² · (1 + 1/3) = 0.013333 and equal weight."""
    from types import SimpleNamespace

    from mnist_repro.core.config import load_params
    from mnist_repro.compare.reference import load_reference
    from mnist_repro.report.across import across_section

    params, reference = load_params(repo_root / "params.yaml"), load_reference(repo_root / "reference/published.json")
    shift = {"skeleton": 0.10, "batch_norm": 0.20, "dropout": 0.05}
    ran = {name: [{"seed": s, "final_test_acc": reference.get(name).log_final_test - d + e,
                   "best_test_acc": reference.get(name).log_best - d + e} for s, e in zip((1, 2, 3), (-0.1, 0, 0.1))]
           for name, d in shift.items()}
    text = "\n".join(across_section(SimpleNamespace(params=params, reference=reference, ran=ran, published_path={})))
    assert text.startswith("**Exploratory, found after looking.**")
    # 3 of 3 above: p = 2 / 8; mean 0.116667 with t(0.975, 2) · 0.076376 / sqrt(3) = ±0.189727 -> [-0.07, +0.31];
    # equal weights: the same mean, SE sqrt(0.013333 / 3) = 0.066667, ±1.959964 · SE = ±0.130664 -> [-0.01, +0.25]
    assert ("- final test: the published value lies above our mean in 3 of 3 variants (below in 0); two-sided sign "
            "test p = 0.250; mean of the differences (published − ours) +0.12, 95% t interval over the 3 variants "
            "[-0.07, +0.31]; pooled with weights 1 / (SD² · (1 + 1/n)) +0.12, 95% CI [-0.01, +0.25].") in text
    header, *rows = table_after(text, "**Exploratory")
    assert [r[0] for r in rows] == list(shift) and [r[5] for r in rows] == ["+0.10", "+0.20", "+0.05"]
    assert "none of these variants has such reruns here yet" in text
    assert "What it cannot test:" in text and "**The notebooks keeping one run.**" in text and ", as here;" in text


def test_the_report_states_the_provenance_record_or_why_there_is_none(built, report):
    # the results project is a copy without git: one line, in the record and in the report
    section_text = section(report, "## Provenance: when each decision was fixed").strip()
    assert section_text.startswith("No git history: ") and "\n" not in section_text
    record = json.loads((built / "metrics/provenance.json").read_text())
    assert record["decisions"] == [] and section_text == record["history"][:1].upper() + record["history"][1:] + "."
