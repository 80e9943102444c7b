"""A fresh clone, as a new user has it (git only: no DVC cache, no remote, no data), of a tiny copy
of the project whose whole pipeline ran and was committed (tests/tiny_project.py):

- docs/pipeline.md's commands: an unchanged clone reruns nothing; "try a change" reruns exactly
  the stages the change touches plus the table and report, and the experiment's table is its own;
  the `dvc exp show` command fits 200 columns.
- No failure, interrupt or typo deletes or changes a committed file: a stage run before its
  inputs exist, a params typo, a SIGINT during training (`git status` clean after each).
- An interrupted `dvc exp run` resumes when rerun the same way (DVC's experiment executor checks
  out a stage's cached outputs before it runs, so resume state must not be one)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time

import pytest
import yaml
from conftest import DVC, REPO, project_env, sh, tree_digests
from tiny_project import fresh_clone, make_origin, porcelain, ran

from mnist_repro.config import load_params

pytestmark = pytest.mark.slow
DOCS = REPO / "docs" / "pipeline.md"
WIDTH = 200


def docs_command(prefix: str) -> list[str]:
    """The one line of docs/pipeline.md's code that starts with prefix, as argv (# comment dropped)."""
    lines = [line.strip() for line in DOCS.read_text().splitlines() if line.strip().startswith(prefix)]
    assert len(lines) == 1, f"docs/pipeline.md should hold one line starting `{prefix}`, found {len(lines)}"
    return shlex.split(lines[0], comments=True)


def dvc(argv: list[str]) -> list[str]:
    assert argv[0] == "dvc", argv
    return [*DVC, *argv[1:]]


@pytest.fixture(scope="module")
def origin(tmp_path_factory, cpu_env):
    work = tmp_path_factory.mktemp("origin") / "project"
    work.mkdir()
    env = project_env(work, {**cpu_env, "OMP_NUM_THREADS": "1"})
    make_origin(work, env, REPO)
    return work, env


@pytest.fixture
def clone(origin, tmp_path):
    """A fresh `git clone` of the tiny project and the environment its stages run in."""
    work, env = origin
    dest = fresh_clone(work, tmp_path / "clone", env)
    return dest, project_env(dest, env)


def get_data(root, env) -> None:
    """docs/pipeline.md's first step in a clone: params check and MNIST, nothing committed changes."""
    proc = sh(dvc(docs_command("dvc repro check_params download")), root, env)
    assert sorted(ran(proc.stdout)) == ["check_params", "download"]
    assert porcelain(root, env) == ""


def committed(root) -> dict:
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
    digests = tree_digests(root)
    return {rel: digests.get(rel) for rel in tracked.splitlines()}


def test_an_unchanged_clone_reruns_nothing(clone):
    root, env = clone
    argv = dvc(docs_command("dvc repro --allow-missing"))
    assert ran(sh(argv, root, env).stdout) == []  # before the data: every stage has only missing outputs
    get_data(root, env)
    assert ran(sh(argv, root, env).stdout) == []
    assert porcelain(root, env) == ""


def touched_by(params, variant: str) -> set:
    """The stages a change to variants.<variant> reruns, from params: its runs in every group, the
    benchmark when it times it, check_params (all of params.yaml), the table and the report."""
    stages = {params.stage_of(variant, s) for s in params.seeds_of(variant)}
    stages |= {f"published_path@{variant}-{s}" for s in params.published_path.seeds
               if variant in params.published_path.variants}
    stages |= {f"precision@{s}" for s in params.precision.seeds if params.precision.variant == variant}
    stages |= {f"confirm@{s}" for s in params.confirmation.seeds if params.confirmation.variant == variant}
    stages |= {"benchmark"} if params.benchmark.variant == variant else set()
    return stages | {"check_params", "compare", "report"}


def without_nulls(value):
    """A metrics file as `dvc exp show --json` reports it: DVC leaves out nulls (and what holds only nulls)."""
    if isinstance(value, dict):
        kept = {k: without_nulls(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not None and v != {}}
    return value


def new_experiment(root, env, known=()) -> dict:
    shown = json.loads(sh([*DVC, "exp", "show", "--json"], root, env).stdout)
    exps = [e for base in shown for e in (base.get("experiments") or []) if e["name"] not in known]
    assert len(exps) == 1, [e["name"] for e in exps]
    return exps[0]


def test_try_a_change_reruns_what_it_touches_and_its_table_is_its_own(clone):
    root, env = clone
    get_data(root, env)
    argv = dvc(docs_command("dvc exp run --allow-missing -S"))
    (key, value), = [a.split("=", 1) for a in argv if a.startswith("variants.")]
    variant = key.split(".")[1]
    proc = sh(argv, root, env, timeout=900)

    assert set(ran(proc.stdout)) == touched_by(load_params(root / "params.yaml"), variant)
    assert yaml.safe_load(value) == getattr(load_params(root / "params.yaml").variant(variant), key.split(".")[2])
    # The experiment's table is the one its own runs give: compare ran on them, nothing is stale,
    # and `dvc exp show` reports the table files now in the workspace.
    assert "compare" in ran(proc.stdout)
    assert ran(sh([*DVC, "repro", "--allow-missing", "--dry"], root, env).stdout) == []
    exp = new_experiment(root, env)
    shown = exp["revs"][0]["data"]["metrics"]
    assert shown and all(without_nulls(json.loads((root / path).read_text())) == m["data"] for path, m in shown.items())
    assert any(variant in path for path in shown)

    # docs/pipeline.md's `dvc exp show` fits a 200-column terminal without cutting a cell.
    show = sh(dvc(docs_command("dvc exp show")), root, {**env, "COLUMNS": str(WIDTH)}).stdout
    lines = show.splitlines()
    assert max(map(len, lines)) <= WIDTH and "…" not in show, show
    assert exp["name"] in show and value in show, show


def test_the_quick_try_reruns_one_run_the_table_and_the_report(clone):
    root, env = clone
    get_data(root, env)
    argv = dvc(docs_command("dvc exp run --allow-missing --downstream"))
    target = next(a for a in argv if "@" in a)
    proc = sh(argv, root, env, timeout=900)
    assert ran(proc.stdout) == [target, "compare", "report"]


def test_a_stage_run_before_its_inputs_exist_changes_no_committed_file(clone):
    root, env = clone
    before = committed(root)
    proc = sh([*DVC, "repro", "-s", "train@lr_scheduler"], root, env, check=False)
    assert proc.returncode != 0 and "data/" in proc.stdout + proc.stderr
    assert porcelain(root, env) == "" and committed(root) == before


def test_a_params_typo_stops_before_any_stage_and_changes_no_committed_file(clone):
    root, env = clone
    get_data(root, env)
    before = committed(root)
    proc = sh([*DVC, "exp", "run", "--temp", "-S", "+train.epoch=3"], root, env, check=False)
    assert proc.returncode != 0 and ran(proc.stdout) == ["check_params"]
    assert "train.epoch: unknown key" in proc.stdout + proc.stderr
    assert porcelain(root, env) == "" and committed(root) == before
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("  epochs:", "  epoch:", 1))  # by hand this time
    proc = sh([*DVC, "repro"], root, env, check=False)
    assert proc.returncode != 0 and ran(proc.stdout) == ["check_params"]
    assert porcelain(root, env) == " M params.yaml\n"
    assert {k: v for k, v in committed(root).items() if k != "params.yaml"} == \
        {k: v for k, v in before.items() if k != "params.yaml"}


def start(argv, root, env, log):
    out = open(log, "wb")
    return subprocess.Popen([str(a) for a in argv], cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def interrupt_after_a_saved_epoch(proc, manifest, log, timeout=600) -> None:
    """SIGINT to the command's whole process group (a terminal's Ctrl-C) once `manifest` names a
    saved state; waits for it to exit."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if json.loads(manifest.read_text()).get("state"):
                break
        except (OSError, ValueError):
            pass
        assert proc.poll() is None, f"ended before a checkpoint:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)


def test_an_interrupted_exp_run_changes_no_result_and_resumes_when_rerun(clone, tmp_path):
    root, env = clone
    get_data(root, env)
    before = committed(root)
    argv = [*DVC, "exp", "run", "train@lr_scheduler", "-S", "train.epochs=4", "-S", "train.train_limit=4096"]
    manifest = root / "checkpoints" / "lr_scheduler" / "node-0" / "run.json"
    log = tmp_path / "first.log"
    proc = start(argv, root, env, log)
    interrupt_after_a_saved_epoch(proc, manifest, log)
    assert proc.returncode != 0, log.read_text()[-3000:]
    changed = sorted(rel for rel in before.keys() | committed(root).keys() if before.get(rel) != committed(root).get(rel))
    # params.yaml holds the user's -S; dvc.lock the check_params stage that ran on it; no result changed.
    assert set(changed) <= {"params.yaml", "dvc.lock"}, changed
    saved = json.loads(manifest.read_text())["state"]

    again = sh(argv, root, env, timeout=900)
    assert re.search(r"lr_scheduler: resuming after epoch [1-3] ", again.stdout), again.stdout[-3000:]
    assert ran(again.stdout)[0] == "train@lr_scheduler" and saved
