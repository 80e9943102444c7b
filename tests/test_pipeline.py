"""End to end: the whole `dvc repro` (download, seven variants, a consistency seed, benchmark,
published path, report) on a tiny slice, in a throw-away git + DVC copy of the project."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

VARIANTS = ["basic_setup", "skeleton", "batch_norm", "dropout", "fc_after_gap", "augmentation", "lr_scheduler"]
OUTPUT_DIRS = ("data/", "models/", "metrics/", "checkpoints/", "dvc_plots/")
TIMEOUT = 900


def project_files(repo_root) -> list[str]:
    """Tracked and new (not ignored) files of the working tree, without pipeline outputs or the lock."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=repo_root, capture_output=True, text=True, check=True).stdout.split("\0")
    return [f for f in listed if f and f != "dvc.lock" and not f.startswith(OUTPUT_DIRS)
            and (repo_root / f).is_file()]


def sh(cmd, cwd, env, timeout=120):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory, repo_root, cli_env, quick_params, mnist_mirror):
    work = tmp_path_factory.mktemp("pipeline") / "project"
    for f in project_files(repo_root):
        (work / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo_root / f, work / f)
    quick_params(work / "params.yaml", epochs=1, train_limit=256, test_limit=200,
                 overrides={"consistency.extra_seeds": [2], "benchmark.steps": 2, "benchmark.repeats": 1})
    env = {**cli_env, "MNIST_MIRROR": mnist_mirror}
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "init.defaultBranch=main"]
    sh([*git, "init", "-q"], work, env)
    sh([*git, "add", "-A"], work, env)
    sh([*git, "commit", "-q", "-m", "copy under test"], work, env)
    repro = sh(["dvc", "repro"], work, env, timeout=TIMEOUT)
    return dict(work=work, env=env, repro=repro)


def test_repro_runs_every_stage(project):
    out = project["repro"].stdout
    stages = ["download", *(f"train@{v}" for v in VARIANTS), "consistency_run@2", "consistency",
              "benchmark", "published_path", "report"]
    for stage in stages:
        assert f"Running stage '{stage}'" in out, stage
    work = project["work"]
    assert (work / "dvc.lock").is_file()
    for v in VARIANTS:
        assert (work / "models" / f"{v}.pt").is_file()
        assert json.loads((work / "checkpoints" / v / "run.json").read_text())["finished"] is True


def test_metrics_show_lists_all_seven_variants(project):
    shown = sh(["dvc", "metrics", "show", "--json"], project["work"], project["env"]).stdout
    files = json.loads(shown)[""]["data"]
    for v in VARIANTS:
        m = files[f"metrics/{v}.json"]["data"]
        assert m["variant"] == v and m["epochs"] == 1
        assert m["train_images"] == 256 and m["test_images"] == 200
        assert m["optimizer_steps"] == 2  # ceil(256 / 128)
    seed = files["metrics/consistency/seed_2.json"]["data"]
    assert seed["variant"] == "lr_scheduler" and seed["seed"] == 2
    assert files["metrics/consistency.json"]["data"]["n"] == 2  # train.seed and the one extra seed
    consistency = json.loads((project["work"] / "metrics/consistency.json").read_text())
    assert sorted(s["seed"] for s in consistency["seeds"]) == [1, 2]
    assert files["metrics/benchmark.json"]["data"]["variant"] == "lr_scheduler"


def test_report_has_a_row_per_variant(project):
    report = (project["work"] / "metrics" / "report.md").read_text()
    for v in VARIANTS:
        assert f"| {v} |" in report, v
    readme = (project["work"] / "README.md").read_text()
    assert "| lr_scheduler |" in readme  # the report stage copies its table into the README


def test_second_repro_is_a_no_op(project):
    proc = sh(["dvc", "repro"], project["work"], project["env"])
    assert "Running stage" not in proc.stdout
    status = sh(["dvc", "status"], project["work"], project["env"]).stdout
    assert "changed" not in status
