"""Throw-away git + DVC copies of the project: params for quick runs, the repository's scripts as
modules, the committed results' layout, and the git/DVC commands tests run."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
import yaml


REPO = Path(__file__).resolve().parents[2]


def repo_variants(names) -> dict:
    """params.yaml's `variants:` entries named in `names`, in params.yaml's order."""
    variants = yaml.safe_load((REPO / "params.yaml").read_text())["variants"]
    return {name: entry for name, entry in variants.items() if name in names}


def write_quick_params(dest: Path, *, epochs: int = 1, train_limit: int = 256, test_limit: int = 200,
                       overrides: dict | None = None) -> Path:
    """The repo's params.yaml with a quick train section; `overrides` maps dotted keys to values."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"].update(epochs=epochs, train_limit=train_limit, test_limit=test_limit)
    for dotted, value in (overrides or {}).items():
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[last] = value
    dest = Path(dest)
    path = dest / "params.yaml" if dest.is_dir() else dest
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# --- stages run in-process, and the committed results in the pipeline's layout ---------------

def load_script(rel: str):
    """A script of the repository (stages/train.py, research/search.py) as a module: they are
    scripts, not a package."""
    import importlib.util

    path = REPO / rel
    spec = importlib.util.spec_from_file_location(f"{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_stage(name: str):
    """stages/<name>.py as a module."""
    return load_script(f"stages/{name}.py")


# Real 15-epoch results on the full data as committed at 37309a9: the seven variants' seed-1 runs,
# four more lr_scheduler seeds and lr_scheduler's published-path rerun, in the pipeline's layout
# (the machine fields that commit's README and report gave written into each run file). Kept in
# tests/data so later reruns change nothing here and a shallow clone (CI) has them.
RESULTS_DIR = REPO / "tests" / "data" / "runs-37309a9"


def committed_seeds(committed: dict, runs: str) -> dict:
    """variant -> its seeds among the committed run files under <runs>/<variant>/seed_<s>.json."""
    seeds = {}
    for rel in committed:
        if rel.startswith(f"{runs}/") and rel.count("/") == runs.count("/") + 2:
            variant, name = rel.split("/")[-2:]
            seeds.setdefault(variant, []).append(int(name.removeprefix("seed_").removesuffix(".json")))
    return {v: sorted(s) for v, s in seeds.items()}


# --- throw-away git + DVC copies of the project, and one finished pipeline on a slice -----------

# Pipeline outputs and the lock: a copy of the project starts without the checkout's results.
PIPELINE_OUTPUTS = ("data/", "models/", "checkpoints/", "metrics/", "dvc_plots/", "dvc.lock")
# ... except the committed inputs kept there: design-search records (made from DVC experiments,
# not by a stage), which the report stage depends on.
PIPELINE_INPUTS = ("metrics/search/",)
# A committer for the repositories tests make (git_commit and `dvc exp run` commit there): a fresh
# machine (CI) has no global git identity, so git_init and git_clone write this one into each.
IDENTITY = {"user.name": "test", "user.email": "test@example.com"}
# The quick pipeline: every kind of stage runs once or twice, each on a slice (benchmark.steps 0 =
# one epoch of the slice), rather than params.yaml's 100-odd runs. Three variants: lr_scheduler,
# which the README's try-a-change changes (so that change reruns its two runs, the table and the
# report only); skeleton, which holds every other group's one run; under_5k, which the committed
# design search and the confirmation name.
QUICK_VARIANTS = ("skeleton", "lr_scheduler", "under_5k")
QUICK_PIPELINE = {"variants": repo_variants(QUICK_VARIANTS),
                  "seeds.variants": ["lr_scheduler"], "seeds.extra": [2],
                  "seeds.slow": {"variants": ["skeleton"], "extra": [2]},
                  "published_path.variants": ["skeleton"], "published_path.seeds": [1],
                  "confirmation.seeds": [101], "precision.variant": "skeleton", "precision.seeds": [1],
                  "compile_check.variants": ["skeleton"], "compile_check.seeds": [1],
                  "data_path_test.variants": ["skeleton"], "data_path_test.seeds": [201],
                  "benchmark.variant": "skeleton", "benchmark.repeats": 1}
PIPELINE_TIMEOUT_S = 1800
DVC = (sys.executable, "-m", "dvc")


def sh(cmd, cwd, env, timeout=300, check=True):
    """Run cmd (no shell); with check, fail the test with its output unless it exits 0. Output is
    decoded by hand: text=True would turn a progress bar's \\r into \\n."""
    import subprocess

    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, timeout=timeout)
    proc.stdout, proc.stderr = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    if check and proc.returncode:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode} in {cwd}\n"
                    f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def porcelain(root: Path, env: dict) -> str:
    """`git status --porcelain --untracked-files=all` of root: "" when the checkout is clean."""
    return sh(["git", "status", "--porcelain", "--untracked-files=all"], root, env).stdout


def _set_identity(root: Path, env: dict) -> None:
    for key, value in IDENTITY.items():
        sh(["git", "config", key, value], root, env)


def git_init(root: Path, env: dict) -> None:
    """A git repository at root, on branch main, with IDENTITY in its own config."""
    sh(["git", "init", "-q", "-b", "main"], root, env)
    _set_identity(root, env)


def git_clone(source: Path, dest: Path, env: dict) -> None:
    """`git clone` of source at dest, with IDENTITY in the clone's own config."""
    sh(["git", "clone", "-q", source, dest], dest.parent, env)
    _set_identity(dest, env)


def git_commit(root: Path, env: dict, message: str) -> None:
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-q", "--allow-empty", "-m", message], root, env)


def init_project(dest: Path, env: dict, *, params: dict | None = None, exclude: tuple = ()) -> Path:
    """A git repository at dest holding the checkout's tracked and new (not ignored) files, without
    pipeline outputs, the lock or `exclude` prefixes; params.yaml written by write_quick_params(**params)
    when given; committed. Returns dest."""
    import shutil
    import subprocess

    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in listed:
        kept = not rel.startswith(PIPELINE_OUTPUTS + tuple(exclude)) or rel.startswith(PIPELINE_INPUTS)
        if rel and kept and (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    if params is not None:
        write_quick_params(dest, **params)
    git_init(dest, env)
    git_commit(dest, env, "project copy under test")
    return dest


def tree_digests(root: Path, under: str = "") -> dict:
    """{relative path: sha256} of every file below root/under, outside .git, .dvc/cache, .dvc/tmp
    and __pycache__ (ignored files included)."""
    import hashlib

    skip = (".git/", ".dvc/cache/", ".dvc/tmp/")
    found = {}
    for path in sorted((root / under).rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not rel.startswith(skip) and "__pycache__" not in path.parts:
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def lock_outs(root: Path) -> set:
    """Every output path dvc.lock records (files and directories)."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def experiments(root: Path, env: dict) -> dict:
    """{experiment name: its rev entry} from `dvc exp show --json`."""
    import json

    shown = json.loads(sh([*DVC, "exp", "show", "--json"], root, env).stdout)
    return {e["name"]: e["revs"][0] for base in shown for e in (base.get("experiments") or [])}


def project_env(root: Path, env: dict) -> dict:
    """env with the copy's own sources (not the editable install's) first on every stage's path."""
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(root / "src"), os.environ.get("PYTHONPATH")]))}
