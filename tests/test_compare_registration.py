"""A registered variant (params.yaml `registration`) in the table and the report, on the committed runs:
three of lr_scheduler's run files stand in for a registered variant's seeds (renamed to its name and
seeds). Its row follows the others, which are as without a registration, with its criterion's outcome
in fin.v; the report gives it its own section and the parameters-against-accuracy figure."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from support.projects import REPO

from mnist_repro.core.config import load_params
from mnist_repro.compare.run_files import read_runs
from mnist_repro.compare.table import registration_outcome

SEEDS = {301: 1, 302: 2, 303: 3}  # registered seed -> lr_scheduler's committed seed standing in for it


def register(root, **criterion) -> None:
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["registration"] = {"variants": {"tiny": {**raw["variants"]["lr_scheduler"], "target": "a test's design"}},
                           "seeds": list(SEEDS), "min_final_test_mean": 99.40, "min_seeds_at": 3, **criterion}
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for seed, source in SEEDS.items():
        for kind in ("runs", "history"):
            data = json.loads((root / f"metrics/{kind}/lr_scheduler/seed_{source}.json").read_text())
            if kind == "runs":
                data.update(variant="tiny", seed=seed)
            (root / f"metrics/{kind}/tiny").mkdir(parents=True, exist_ok=True)
            (root / f"metrics/{kind}/tiny/seed_{seed}.json").write_text(json.dumps(data))


def rows_of(table) -> dict:
    return {p.name: p.read_bytes() for p in sorted(table.glob("*.json"))}


@pytest.fixture(scope="module")
def project(tmp_path_factory, make_results_project, run_stage, compare_argv):
    """The results project: its table without a registration in table_before/, then registered and compared."""
    root = make_results_project(tmp_path_factory.mktemp("registered"))
    run_stage("compare", [*compare_argv(root)[:-1], root / "table_before"])
    register(root)
    run_stage("compare", compare_argv(root))
    return root


def test_the_registered_row_comes_last_with_its_outcome_and_the_others_are_unchanged(project):
    before, after = rows_of(project / "table_before"), rows_of(project / "metrics/table")
    assert list(after) == [*before, "8_tiny.json"] and {k: after[k] for k in before} == before
    row = json.loads(after["8_tiny.json"])
    finals = [json.loads((project / f"metrics/runs/tiny/seed_{s}.json").read_text())["final_test_acc"] for s in SEEDS]
    assert min(finals) >= 99.40 and row["fin"]["v"] == "met" and row["n"] == 3
    assert row["best"]["pub"] is None and row["best"]["v"] is None and row["pp"] == {"best": None}
    assert row["fin"]["mean"] == round(sum(finals) / 3, 2)


def test_the_outcome_counts_the_mean_and_the_seeds_at_the_threshold(project):
    params = load_params(project / "params.yaml")
    runs = read_runs(params, project / "metrics/runs")["tiny"]
    reg = params.registration
    finals = sorted(r["final_test_acc"] for r in runs)
    mean = sum(finals) / len(finals)
    assert registration_outcome(runs, reg) == "met"
    higher = type(reg)(reg.variants, reg.seeds, round(mean + 0.001, 3), 0)        # the mean misses it
    assert registration_outcome(runs, higher) == "not met"
    between = (finals[0] + finals[1]) / 2                                        # the lowest seed below it
    counted = type(reg)(reg.variants, reg.seeds, between, 3)
    assert mean >= between and registration_outcome(runs, counted) == "not met"  # the mean meets it, a seed not
    assert registration_outcome(runs, type(reg)(reg.variants, reg.seeds, between, 2)) == "met"
    assert registration_outcome([], reg) == "not run" and registration_outcome(runs[:2], reg) == "2/3 runs"
    holdout = [{**r, "evaluated_on": "holdout (last 10,000 training images)"} for r in runs]
    assert registration_outcome(holdout, reg) is None


def test_a_registered_variant_not_run_yet_says_its_stages(project, tmp_path, run_stage, compare_argv, capsys):
    root = tmp_path / "copy"
    shutil.copytree(project, root)
    (root / "metrics/runs/tiny/seed_301.json").unlink()
    run_stage("compare", compare_argv(root))
    line = capsys.readouterr().out.splitlines()[-3]
    assert line == (f"tiny: not run yet ({root}/metrics/runs/tiny/seed_301.json missing; extra seeds 302, 303 "
                    "present, ignored until it exists): dvc repro registered (its 3 stages registered@tiny-301 ... "
                    "registered@tiny-303, run together)")
    row = json.loads((root / "metrics/table/8_tiny.json").read_text())
    assert row["n"] == 0 and row["fin"]["v"] == "not run"
    (root / "metrics/runs/tiny/seed_302.json").unlink()
    shutil.copy(project / "metrics/runs/tiny/seed_301.json", root / "metrics/runs/tiny/seed_301.json")
    with pytest.raises(SystemExit):
        run_stage("compare", compare_argv(root))
    err = capsys.readouterr().err.strip()
    assert err.endswith("seed_302.json: missing; run `dvc repro registered@tiny-302`") and "\n" not in err


@pytest.fixture(scope="module")
def reported(project, tmp_path_factory, report_argv, run_stage) -> str:
    """The report with search records: one for the registered design, one for a design not registered yet."""
    search = tmp_path_factory.mktemp("search")
    record = json.loads((REPO / "metrics/search/under_5k.json").read_text())
    for name in ("tiny", "ghost"):
        (search / f"{name}.json").write_text(json.dumps({**record, "variant": name, "stage": "train@under_5k"}))
    shutil.copy(REPO / "metrics/search/test_set_uses.json", search / "test_set_uses.json")
    run_stage("report", [*report_argv(project), "--search", search])
    return (project / "metrics/report.md").read_text()


def test_the_report_has_the_registered_variants_section(project, reported):
    section = reported.split("## Registered variant: tiny", 1)[1].split("\n## ", 1)[0]
    assert "`registration.variants.tiny`" in section and "seeds 301–303" in section
    assert "**Outcome: criterion met**: mean final test" in section and "3 of 3 seeds at 99.40% or above" in section
    for seed in SEEDS:
        assert f"| {seed} | " in section
    assert "| `tiny` | 6,720 | 3 |" in section and "| `lr_scheduler` | 6,720 | 5 |" in section
    assert "Beside `lr_scheduler`:" in section  # the results project has no under_5k
    assert "### Design search: tiny" in section and "experiments of `train@under_5k`" in section
    assert "not known here (no git history" in section  # the results project is no git repository
    assert "\n## Design search: tiny" not in reported  # in its own section, once
    ghost = reported.split("## Design search: ghost", 1)[1].split("\n## ", 1)[0]
    assert "`params.yaml` has no variant `ghost`: the design is not registered yet" in ghost
    assert "`model=s16-24-32-32-32`" in ghost  # overrides keyed by the stage's variant, shown without its prefix
    figure = project / "metrics/figures/params_vs_final_test.png"
    assert figure.is_file() and "(figures/params_vs_final_test.png)" in section
    side = reported.split("## Side by side", 1)[1].split("\n## ", 1)[0]
    tiny_row = next(line for line in side.splitlines() if line.startswith("| tiny |"))
    assert "criterion met" in tiny_row and "(seed 301)" in tiny_row
