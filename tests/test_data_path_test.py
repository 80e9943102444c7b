"""The report's section on the confirmatory data-path test (params.yaml `data_path_test`): its run files read
as far as they exist, no verdict until every seed of both paths is in, then Welch + TOST per variant on
final test accuracy. Synthetic run files of the real shape (a committed run file with its accuracies and
seed changed), in temp directories."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import pytest
import yaml
from scipy.stats import t as student_t
from support.projects import REPO, RESULTS_DIR, write_quick_params

from mnist_repro.compare.run_files import read_data_path_power, read_data_path_test
from mnist_repro.core.config import load_params
from mnist_repro.core.errors import InputFileError
from mnist_repro.report.data_path_test import data_path_test_section
from mnist_repro.report.decisions import entry_of
from mnist_repro.report.inputs import ReportInputs

SEEDS = list(range(201, 221))   # n = 20 a side
MARGIN = 0.10
VARIANTS = ["augmentation", "lr_scheduler"]
TEMPLATE = RESULTS_DIR / "metrics/runs/lr_scheduler/seed_1.json"       # a real 15-epoch run file
TEMPLATE_HISTORY = RESULTS_DIR / "metrics/history/lr_scheduler/seed_1.json"


def final_of(seed: int) -> float:
    """A made-up final test accuracy per seed: 99.35 to 99.45, spread over the seeds."""
    return round(99.40 + 0.01 * ((seed * 7) % 11 - 5), 2)


def write_run(root: Path, side: str, variant: str, at: int, final: float, **changes) -> None:
    """The run file and history of seed `at`; changes: keys written other than the path says."""
    run = {**json.loads(TEMPLATE.read_text()), "variant": variant, "seed": at, "data_path": side,
           "final_test_acc": final, "best_test_acc": round(final + 0.02, 2), **changes}
    for kind, content in (("runs", json.dumps(run)), ("history", TEMPLATE_HISTORY.read_text())):
        path = root / side / kind / variant / f"seed_{at}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


@pytest.fixture(scope="module")
def params(tmp_path_factory):
    path = write_quick_params(tmp_path_factory.mktemp("params"), overrides={
        "data_path_test.variants": VARIANTS, "data_path_test.seeds": SEEDS, "data_path_test.margin": MARGIN})
    return load_params(path)


def inputs_of(params, test_dir: Path, power: dict | None = None, provenance: dict | None = None) -> ReportInputs:
    """What the section reads, the data-path test's runs read from test_dir as the report stage reads them."""
    return ReportInputs(params=params, reference=None, table={}, runs={}, histories={}, published_path={},
                        errors=None, precision=[], provenance=provenance or {},
                        data_path_test=read_data_path_test(params, test_dir), data_path_power=power)


def section_of(*args, **kwargs) -> str:
    return "\n".join(data_path_test_section(inputs_of(*args, **kwargs)))


def table_rows(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    if not lines:
        return []
    header = [c.strip() for c in lines[0].strip("|").split(" | ")]
    return [dict(zip(header, (c.strip() for c in line.strip().strip("|").split(" | ")))) for line in lines[2:]]


def expected(ours: list[float], theirs: list[float]) -> dict:
    """Welch's difference, CIs and df by hand (the textbook formulas)."""
    va, vb = statistics.variance(ours) / len(ours), statistics.variance(theirs) / len(theirs)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(ours) - 1) + vb ** 2 / (len(theirs) - 1))
    d = statistics.mean(ours) - statistics.mean(theirs)
    ci = lambda level: "[{:+.2f}, {:+.2f}]".format(*(d + s * student_t.ppf((1 + level) / 2, df) * se  # noqa: E731
                                                      for s in (-1, 1)))
    return {"Difference": f"{d:+.2f}", "95% CI": ci(0.95), "90% CI": ci(0.90), "df": f"{df:.1f}"}


# --- the three states ----------------------------------------------------------------------------

def test_not_run_names_the_stages_to_run(params, tmp_path):
    text = section_of(params, tmp_path / "missing")
    assert "**Outcome: not run yet** (0 of 80 runs): `dvc repro data_path_ours data_path_published` runs them all." \
        in text
    assert ("- `augmentation`: not run yet: `dvc repro data_path_ours@augmentation-201` ... "
            "`data_path_ours@augmentation-220` and `dvc repro data_path_published@augmentation-201` ... "
            "`data_path_published@augmentation-220`") in text
    assert "n = 20 a side" in text and "margin ±0.10 points from `params.yaml` (`data_path_test.margin`)" in text
    assert not table_rows(text)


def test_no_verdict_with_19_of_20_seeds(params, tmp_path):
    for seed in SEEDS:
        write_run(tmp_path, "ours", "augmentation", seed, final_of(seed))
        if seed != SEEDS[-1]:
            write_run(tmp_path, "published", "augmentation", seed, final_of(seed))
    text = section_of(params, tmp_path)
    assert not table_rows(text)
    assert "**Outcome: no verdict yet**: 39 of 80 runs in." in text
    assert ("- `augmentation`: 20 of 20 seeds in on our path, 19 of 20 on the published path: no verdict until all "
            "20 of both are in. Still to run: `dvc repro data_path_published@augmentation-220` (seeds 220)") in text
    assert "- `lr_scheduler`: not run yet" in text
    assert "**Outcome (" not in text  # the verdicts' line


@pytest.fixture(scope="module")
def complete(tmp_path_factory) -> Path:
    """Every seed of both paths: augmentation the same values on both paths, lr_scheduler's published path
    0.20 points lower than ours at every seed (twice the margin)."""
    root = tmp_path_factory.mktemp("complete")
    for seed in SEEDS:
        for side in ("ours", "published"):
            write_run(root, side, "augmentation", seed, final_of(seed))
        write_run(root, "ours", "lr_scheduler", seed, final_of(seed))
        write_run(root, "published", "lr_scheduler", seed, round(final_of(seed) - 0.20, 2))
    return root


def test_identical_paths_are_equivalent_and_a_shift_beyond_the_margin_is_different(params, complete):
    text = section_of(params, complete)
    rows = table_rows(text)
    assert [(r["Variant"], r["Metric"]) for r in rows] == [("augmentation", "final test"), ("augmentation", "best test"),
                                                           ("lr_scheduler", "final test"), ("lr_scheduler", "best test")]
    finals = [final_of(s) for s in SEEDS]
    same, shifted = rows[0], rows[2]
    # identical values: difference 0, equal spreads and n, so Welch's df is 2n − 2
    assert {k: same[k] for k in ("Difference", "95% CI", "90% CI", "df")} == expected(finals, finals)
    assert same["Difference"] == "+0.00" and same["df"] == "38.0" and same["Verdict"] == "equivalent"
    assert same["Seeds"] == "201–220" and same["n a side"] == "20"
    assert same["Ours mean (SD)"] == f"{statistics.mean(finals):.2f} ({statistics.stdev(finals):.3f})"
    lower = [round(f - 0.20, 2) for f in finals]
    assert {k: shifted[k] for k in ("Difference", "95% CI", "90% CI", "df")} == expected(finals, lower)
    assert shifted["Difference"] == "+0.20" and shifted["Verdict"] == "different"
    # best test is reported with no verdict
    assert rows[1]["Verdict"] == rows[3]["Verdict"] == "none (reported only)"
    assert "**Outcome (final test, per variant):** `augmentation` *equivalent*, `lr_scheduler` *different*." in text
    assert "Not complete yet" not in text


def test_a_complete_variant_gets_its_verdict_while_the_other_waits(params, complete, tmp_path):
    root = tmp_path / "test"
    shutil.copytree(complete, root)
    (root / "published/runs/lr_scheduler/seed_207.json").unlink()
    text = section_of(params, root)
    assert [r["Variant"] for r in table_rows(text)] == ["augmentation", "augmentation"]
    assert "**Outcome (final test, per variant):** `augmentation` *equivalent*; 1 of 2 variants without a verdict" in text
    assert "- `lr_scheduler`: 20 of 20 seeds in on our path, 19 of 20 on the published path" in text


# --- what it can tell apart, and when it was fixed -------------------------------------------------

def power_record(margin: float = MARGIN) -> dict:
    return {"metric": "final_test_acc", "margin": margin, "variants": {"augmentation": {
        "ours": {"seeds": list(range(1, 11)), "sd": 0.0668}, "published_path": {"seeds": [1, 2, 3, 4, 5], "sd": 0.1222},
        "power_equivalent_if_no_difference": {"18": 0.8175, "20": 0.866}}}}


def test_the_planned_power_is_read_from_its_record(params, tmp_path):
    text = section_of(params, tmp_path, power=power_record())
    assert ("if the paths do not differ, the chance of *equivalent* at n = 20 a side is 87% for `augmentation` "
            "(SD ours 0.067 over 10 seeds, published path 0.122 over 5). Not simulated at n = 20 for "
            "`lr_scheduler`.") in text
    assert "cannot tell a difference inside the margin from none" in text
    other = section_of(params, tmp_path, power=power_record(margin=0.2))
    assert "is for margin 0.2 on final_test_acc, not this rule's: it is not stated" in other and "87%" not in other
    assert "No planned power is given" in section_of(params, tmp_path)


def test_the_committed_power_record_reads(params, tmp_path):
    record = read_data_path_power(REPO / "research/data_path_power.json")
    text = section_of(params, tmp_path, power=record)
    for name in VARIANTS:
        chance = record["variants"][name]["power_equivalent_if_no_difference"][str(len(SEEDS))]
        assert f"{chance:.0%} for `{name}`" in text


def test_when_its_parts_were_fixed_comes_from_the_provenance_record(params, tmp_path):
    assert "- the margin (`data_path_test.margin`): not known here (no git history" in section_of(params, tmp_path)
    record = json.loads((REPO / "metrics/provenance.json").read_text())
    if not entry_of(record, "data_path_test.seeds"):
        pytest.skip("the committed provenance record predates the data-path test")
    text = section_of(params, tmp_path, provenance=record)
    for key in ("variants", "seeds", "margin"):
        entry = entry_of(record, f"data_path_test.{key}")
        line = next(line for line in text.splitlines() if line.startswith(f"- the {key} (`data_path_test.{key}`)"))
        assert f"commit `{entry['commit'][:7]}`" in line and entry["class"] in line


# --- the run files are checked as the report's other inputs are ----------------------------------------

@pytest.mark.parametrize("edit, message", [
    (lambda root: write_run(root, "ours", "augmentation", 203, 99.4, seed=204),
     r"seed_203.json: holds \{'seed': 204\}.*stale; run `dvc repro data_path_ours@augmentation-203`"),
    (lambda root: write_run(root, "published", "augmentation", 203, 99.4, data_path="ours"),
     r"holds \{'data_path': 'ours'\}.*run `dvc repro data_path_published@augmentation-203`"),
    (lambda root: (root / "ours/history/augmentation/seed_203.json").unlink(),
     r"seed_203.json: missing; run `dvc repro data_path_ours@augmentation-203`"),
    (lambda root: write_run(root, "published", "lr_scheduler", 205, 99.4, train_images=256),
     r"lr_scheduler differ in \(epochs, train images, test images, evaluated on\)"),
])
def test_a_bad_run_file_is_one_line_naming_its_stage(params, complete, tmp_path, edit, message):
    root = tmp_path / "test"
    shutil.copytree(complete, root)
    edit(root)
    with pytest.raises(InputFileError, match=message) as info:
        read_data_path_test(params, root)
    assert "\n" not in str(info.value)


def test_the_report_stage_renders_the_section(make_results_project, run_stage, compare_argv, report_argv,
                                              complete, tmp_path):
    """Through stages/report.py with dvc.yaml's flags: the section is in metrics/report.md with its verdicts."""
    (tmp_path / "project").mkdir()
    root = make_results_project(tmp_path / "project")
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["data_path_test"] = {"variants": VARIANTS, "seeds": SEEDS, "margin": MARGIN}
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    shutil.copytree(complete, root / "metrics/data_path_test")
    report = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["report"]
    assert "--data-path-test metrics/data_path_test" in report["cmd"] and "metrics/data_path_test" in report["deps"]
    run_stage("compare", compare_argv(root))
    run_stage("report", [*report_argv(root), "--data-path-power", REPO / "research/data_path_power.json"])
    text = (root / "metrics/report.md").read_text().split("## The confirmatory data-path test\n", 1)[1]
    text = text.split("\n## ", 1)[0]
    assert "`augmentation` *equivalent*, `lr_scheduler` *different*" in text
    assert [r["Verdict"] for r in table_rows(text)] == ["equivalent", "none (reported only)", "different",
                                                        "none (reported only)"]
