"""A fresh clone, as a new user has it (git only: no DVC cache, no remote, no data), of conftest's
finished_pipeline (a slice of the project whose whole pipeline ran and was committed):

- The README's and docs/pipeline.md's commands: an unchanged clone reruns nothing; "try a change"
  is an experiment that reruns exactly the stages the change touches plus the table and report,
  whose table is made from its own runs, and `--temp` leaves the workspace as it was; the
  `dvc exp show` command fits 200 columns.
- No failure, interrupt or bad params deletes or changes a committed file: a stage run before its
  inputs exist, a typo'd key or out-of-range value (`-S` or by hand), a SIGINT during training.
- An interrupted `dvc exp run` resumes when rerun the same way (DVC's experiment executor checks
  out a stage's cached outputs before it runs, so resume state must not be one)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support.projects import DVC, REPO, experiments, git_clone, porcelain, project_env, sh, tree_digests

from mnist_repro.core.config import load_params

pytestmark = pytest.mark.slow
DOCS = REPO / "docs" / "pipeline.md"
WIDTH = 200
TRY_COMMAND = "dvc exp run --temp --allow-missing -S"   # README's and docs/pipeline.md's try-a-change
RUNNING = re.compile(r"^Running stage '([^']+)':", re.M)


def command_in(path, prefix: str) -> list[str]:
    """The one line of path's text that starts with prefix, as argv (a trailing # comment dropped)."""
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip().startswith(prefix)]
    assert len(lines) == 1, f"{path.name} should hold one line starting `{prefix}`, found {len(lines)}"
    return shlex.split(lines[0], comments=True)


def docs_command(prefix: str) -> list[str]:
    return command_in(DOCS, prefix)


def dvc(argv: list[str]) -> list[str]:
    assert argv[0] == "dvc", argv
    return [*DVC, *argv[1:]]


def ran(stdout: str) -> list[str]:
    """The stages a `dvc repro` / `dvc exp run` printed as running, in order."""
    return RUNNING.findall(stdout)


@pytest.fixture
def clone(finished_pipeline, tmp_path):
    """A fresh `git clone` of the finished pipeline (committed files only, no DVC cache, no remote)
    and the environment its stages run in."""
    dest = tmp_path / "clone"
    env = {**finished_pipeline["env"], "OMP_NUM_THREADS": "1"}
    git_clone(finished_pipeline["work"], dest, env)
    return dest, project_env(dest, env)


def get_data(root, env) -> None:
    """docs/pipeline.md's first step in a clone: MNIST (check_params is up to date: its stamp is
    committed), nothing committed changes."""
    proc = sh(dvc(docs_command("dvc repro check_params download")), root, env)
    assert ran(proc.stdout) == ["download"]
    assert porcelain(root, env) == ""


@pytest.fixture(scope="module")
def cloned_with_data(finished_pipeline, tmp_path_factory):
    """A fresh clone (as `clone`) after get_data, made once: (root, the environment without the
    clone's own PYTHONPATH). Tests work in copies of it (clone_with_data)."""
    dest = tmp_path_factory.mktemp("with_data") / "clone"
    env = {**finished_pipeline["env"], "OMP_NUM_THREADS": "1"}
    git_clone(finished_pipeline["work"], dest, env)
    get_data(dest, project_env(dest, env))
    return dest, env


@pytest.fixture
def clone_with_data(cloned_with_data, tmp_path):
    """A private copy of cloned_with_data (DVC cache hard-linked, its state rebuilt) and the
    environment its stages run in: a fresh clone that has run docs/pipeline.md's first step."""
    src, env = cloned_with_data
    dest = tmp_path / "clone_with_data"
    shutil.copytree(src, dest, symlinks=True,
                    ignore=lambda d, names: ["tmp", "cache"] if Path(d) == src / ".dvc" else [])
    shutil.copytree(src / ".dvc" / "cache", dest / ".dvc" / "cache", copy_function=os.link)
    return dest, project_env(dest, env)


def committed(root) -> dict:
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
    digests = tree_digests(root)
    return {rel: digests.get(rel) for rel in tracked.splitlines()}


def changed_since(before: dict, root) -> set:
    """The committed files whose content differs from `before` (a committed() of root)."""
    now = committed(root)
    return {rel for rel in before.keys() | now.keys() if before.get(rel) != now.get(rel)}


def test_an_unchanged_clone_reruns_nothing(clone, clone_with_data):
    root, env = clone
    argv = dvc(docs_command("dvc repro --allow-missing"))
    assert ran(sh(argv, root, env).stdout) == []  # before the data: every stage has only missing outputs
    root, env = clone_with_data                   # after get_data
    assert ran(sh(argv, root, env).stdout) == []
    assert porcelain(root, env) == ""


def touched_by(params, variant: str) -> set:
    """The stages a change to variants.<variant> reruns, from params: its runs in every group, the
    benchmark when it times it, check_params (all of params.yaml), the table and the report."""
    stages = {params.stage_of(variant, s) for s in params.seeds_of(variant)}
    stages |= {f"published_path@{variant}-{s}" for s in params.published_path.seeds
               if variant in params.published_path.variants}
    stages |= {f"precision@{s}" for s in params.precision.seeds if params.precision.variant == variant}
    stages |= {f"compile_check@{variant}-{s}" for s in params.compile_check.seeds
               if variant in params.compile_check.variants}
    stages |= {f"confirm@{s}" for s in params.confirmation.seeds if params.confirmation.variant == variant}
    stages |= {"benchmark"} if params.benchmark.variant == variant else set()
    return stages | {"check_params", "compare", "report"}


def without_nulls(value):
    """A metrics file as `dvc exp show --json` reports it: DVC leaves out nulls (and what holds only nulls)."""
    if isinstance(value, dict):
        kept = {k: without_nulls(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not None and v != {}}
    return value


def set_values(argv: list[str]) -> dict:
    """{dotted key: value} of the command's `-S key=value` options, values read as YAML."""
    pairs = [argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a in ("-S", "--set-param")]
    return {key: yaml.safe_load(value) for key, value in pairs}


def test_try_a_change_is_an_experiment_of_its_own_runs_and_leaves_the_workspace(clone_with_data):
    """The README's try-a-change (docs/pipeline.md shows the same line) reruns exactly the runs its
    -S touches, then the table and the report, so the experiment's table row is made from the
    experiment's own runs; --temp leaves the workspace and `dvc status` as they were."""
    root, env = clone_with_data
    argv = dvc(command_in(root / "README.md", TRY_COMMAND))
    for prefix in (TRY_COMMAND, "dvc exp show"):
        assert command_in(root / "README.md", prefix) == docs_command(prefix), \
            f"README.md and docs/pipeline.md show different `{prefix}` lines"
    (key, value), = set_values(argv).items()
    variant, field = key.split(".")[1:]
    params = load_params(root / "params.yaml")
    status, before, known = sh([*DVC, "status"], root, env).stdout, tree_digests(root), set(experiments(root, env))

    proc = sh(argv, root, env, timeout=900)

    assert set(ran(proc.stdout)) == touched_by(params, variant)
    assert tree_digests(root) == before and sh([*DVC, "status"], root, env).stdout == status
    new = {name: rev for name, rev in experiments(root, env).items() if name not in known}
    assert len(new) == 1, f"expected one new experiment in dvc exp show, got {sorted(new)}"
    (name, rev), = new.items()
    assert not rev.get("error"), rev["error"]
    assert rev["data"]["params"]["params.yaml"]["data"]["variants"][variant][field] == value

    # Every run of the changed variant was retrained with the set value: the experiment's dvc.lock
    # records the run's stage with it and with the files the experiment holds, and the run's
    # history (per-epoch values as computed, e.g. the schedule's lr) differs from the baseline's.
    # Its summary may not: at this size (1 epoch, 2 steps) its rounded numbers can coincide.
    # The experiment's table row is the mean of those runs.
    text = lambda path: sh(["git", "show", f"{rev['rev']}:{path}"], root, env).stdout  # noqa: E731
    show = lambda path: json.loads(text(path))  # noqa: E731
    lock = yaml.safe_load(text("dvc.lock"))["stages"]
    seeds = params.seeds_of(variant)
    for seed in seeds:
        entry = lock[params.stage_of(variant, seed)]
        assert entry["params"]["params.yaml"][f"variants.{variant}"][field] == value, f"seed {seed}: {entry}"
        outs = {out["path"]: out["md5"] for out in entry["outs"]}
        for kind in ("runs", "history"):
            rel = f"metrics/{kind}/{variant}/seed_{seed}.json"
            assert hashlib.md5(text(rel).encode()).hexdigest() == outs[rel], f"{rel} is not the run dvc.lock records"
        history = f"metrics/history/{variant}/seed_{seed}.json"
        assert show(history) != json.loads((root / history).read_text()), f"seed {seed} was not retrained"
    runs = [show(f"metrics/runs/{variant}/seed_{s}.json") for s in seeds]
    row_path = next((root / "metrics" / "table").glob(f"*_{variant}.json")).relative_to(root).as_posix()
    row = show(row_path)
    assert row["n"] == len(runs) and row["best"]["mean"] == round(sum(r["best_test_acc"] for r in runs) / len(runs), 2)

    # `dvc exp show` reports the experiment's table files, and docs/pipeline.md's line fits a
    # 200-column terminal without cutting a cell.
    shown = rev["data"]["metrics"]
    assert shown and all(without_nulls(show(path)) == m["data"] for path, m in shown.items())
    assert row_path in shown
    out = sh(dvc(docs_command("dvc exp show")), root, {**env, "COLUMNS": str(WIDTH)}).stdout
    assert max(map(len, out.splitlines())) <= WIDTH and "…" not in out, out
    assert name in out and str(value) in out, out


def test_the_quick_try_reruns_one_run_the_table_and_the_report(clone_with_data):
    root, env = clone_with_data
    argv = dvc(docs_command("dvc exp run --allow-missing --downstream"))
    target = next(a for a in argv if "@" in a)
    proc = sh(argv, root, env, timeout=900)
    assert ran(proc.stdout) == [target, "compare", "report"]


def test_a_fresh_clone_previews_what_would_run_in_seconds(clone):
    """Before any data, `dvc status` and `dvc repro --dry` exit 0 and name the same stages: those
    whose DVC-cached outputs a clone lacks (download's MNIST, each main run's weights). (Every dep
    is in git: DVC hashes a stage's deps also in a dry run, treeverse/dvc#9818.) The matrix's --dry
    plans them, and compare and report after the runs, in under 30 s with an estimate."""
    root, env = clone
    params = load_params(root / "params.yaml")
    missing = {"download", *(f"train@{variant}" for variant in params.variants)}
    assert set(json.loads(sh([*DVC, "status", "--json"], root, env).stdout)) == missing
    assert set(ran(sh([*DVC, "repro", "--dry"], root, env).stdout)) == missing
    start = time.monotonic()
    plan = sh([sys.executable, "-m", "mnist_repro.parallel.matrix", "run", "--dry"], root, env)
    took = time.monotonic() - start
    stages = set(sh([*DVC, "stage", "list", "--name-only"], root, env).stdout.split())
    listed = {line.split()[0] for line in plan.stdout.splitlines() if line.startswith("  ")} & stages
    assert listed == missing | {"compare", "report"}, plan.stdout
    assert re.search(rf"^{len(params.variants)} training run\(s\) pending: about ", plan.stdout, re.M), plan.stdout
    assert took < 30, f"python -m mnist_repro.parallel.matrix run --dry took {took:.0f} s"
    assert porcelain(root, env) == ""


def test_a_stage_run_before_its_inputs_exist_says_what_to_run_and_changes_no_committed_file(clone):
    root, env = clone
    before = committed(root)
    proc = sh([*DVC, "repro", "-s", "train@lr_scheduler"], root, env, check=False)
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and said == ["error: data/MNIST/raw: no MNIST here yet; run `dvc repro download` first"]
    assert porcelain(root, env) == "" and committed(root) == before


# A typo'd key (README's --temp form) and an out-of-range value (in the workspace), each with what
# its error must name.
BAD_OVERRIDES = ((["--temp"], "+train.epoch=3", re.compile(r"\btrain\.epoch: unknown key")),
                 ([], "train.epochs=0", re.compile(r"\btrain\.epochs\b.*\b0\b")))


def test_bad_params_stop_in_check_params_and_change_no_committed_file(clone_with_data):
    root, env = clone_with_data
    before, data = committed(root), tree_digests(root, "data/MNIST")
    for temp, override, names_key in BAD_OVERRIDES:
        what = f"dvc exp run {' '.join(temp)} -S {override}"
        proc = sh([*DVC, "exp", "run", *temp, "-S", override], root, env, check=False)
        assert proc.returncode != 0 and ran(proc.stdout) == ["check_params"], f"{what}:\n{proc.stdout[-3000:]}"
        assert names_key.search(proc.stdout + proc.stderr), f"{what}: the error does not name the key"
        # Without --temp the -S stays in params.yaml, as DVC leaves it; nothing else changes.
        assert porcelain(root, env) == ("" if temp else " M params.yaml\n"), what
        assert changed_since(before, root) <= (set() if temp else {"params.yaml"}) and tree_digests(root, "data/MNIST") == data
        sh(["git", "checkout", "--", "params.yaml"], root, env)
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("  epochs:", "  epoch:", 1))  # by hand this time
    proc = sh([*DVC, "repro"], root, env, check=False)
    assert proc.returncode != 0 and ran(proc.stdout) == ["check_params"]
    assert porcelain(root, env) == " M params.yaml\n" and changed_since(before, root) == {"params.yaml"}


def start(argv, root, env, log):
    out = open(log, "wb")
    return subprocess.Popen([str(a) for a in argv], cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def interrupt_after_a_saved_epoch(proc, manifest, log, timeout=600) -> None:
    """SIGINT to the command's whole process group (a terminal's Ctrl-C) once `manifest` names a
    saved state; waits for it to exit."""
    deadline = time.monotonic() + timeout
    while True:
        try:  # manifest may be a glob pattern under the project
            found = [manifest] if manifest.exists() else list(Path(manifest.anchor).glob(str(manifest)[1:]))
            if any(json.loads(m.read_text()).get("state") for m in found):
                break
        except (OSError, ValueError):
            pass
        assert proc.poll() is None, f"ended before a checkpoint:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)


def test_an_interrupted_exp_run_changes_no_result_and_resumes_when_rerun(clone_with_data, tmp_path):
    root, env = clone_with_data
    before = committed(root)
    argv = [*DVC, "exp", "run", "train@lr_scheduler", "-S", "train.epochs=3", "-S", "train.train_limit=2048"]
    log = tmp_path / "first.log"
    proc = start(argv, root, env, log)
    # dvc.yaml's --resume: the run's own folder, checkpoints/<variant>-seed<seed>/<settings fingerprint>/
    manifest = root / "checkpoints" / "lr_scheduler-seed1" / "*" / "node-0" / "run.json"
    interrupt_after_a_saved_epoch(proc, manifest, log)
    manifest, = root.glob(str(manifest.relative_to(root)))
    assert proc.returncode != 0, log.read_text()[-3000:]
    changed = sorted(changed_since(before, root))
    # params.yaml holds the user's -S; dvc.lock the check_params stage that ran on it; no result changed.
    assert set(changed) <= {"params.yaml", "dvc.lock"}, changed
    saved = json.loads(manifest.read_text())["state"]

    again = sh(argv, root, env, timeout=900)
    assert re.search(r"lr_scheduler: resuming after epoch [12] ", again.stdout), again.stdout[-3000:]
    assert ran(again.stdout)[0] == "train@lr_scheduler" and saved
