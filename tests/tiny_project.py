"""A tiny copy of the whole project for tests that start DVC: the worktree's files (conftest's
init_project: tracked and new files, no pipeline outputs) with params.yaml shrunk so that every
stage runs in seconds, the pipeline run once and committed, as a fresh repository to `git clone`.

TINY is the params override: three variants, one extra seed, one epoch on 256 training and 200
test images; run groups with no stage in this copy are empty lists (their result folders hold a
placeholder so that compare and report find them)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from conftest import DVC, GIT, git_commit, init_project, sh

TINY = {
    "train.cpu_threads": 1,
    "variants": None,  # filled by tiny_overrides: KEPT_VARIANTS of the repo's
    "seeds.variants": ["lr_scheduler"], "seeds.extra": [2], "seeds.slow": {"variants": [], "extra": []},
    "published_path.variants": [], "confirmation.variant": "lr_scheduler", "confirmation.seeds": [],
    "precision.seeds": [], "benchmark.steps": 2, "benchmark.repeats": 1,
}
KEPT_VARIANTS = ("skeleton", "lr_scheduler", "under_5k")  # under_5k: metrics/search names it
EMPTY_GROUPS = ("metrics/published_path", "metrics/confirmation", "metrics/precision")
RUNNING = re.compile(r"^Running stage '([^']+)':", re.M)


def tiny_overrides(repo: Path) -> dict:
    import yaml

    variants = yaml.safe_load((repo / "params.yaml").read_text())["variants"]
    return {**TINY, "variants": {name: variants[name] for name in KEPT_VARIANTS}}


def ran(stdout: str) -> list[str]:
    """The stages a `dvc repro` / `dvc exp run` printed as running, in order."""
    return RUNNING.findall(stdout)


def make_origin(dest: Path, env: dict, repo: Path) -> tuple[Path, str]:
    """The tiny project at dest with its whole pipeline run and committed (git only: DVC's cache
    stays here, as on the machine that trained). Returns (dest, the repro's stdout)."""
    init_project(dest, env, params={"overrides": tiny_overrides(repo)})
    for folder in EMPTY_GROUPS:
        (dest / folder).mkdir(parents=True, exist_ok=True)
        (dest / folder / "NONE.md").write_text("No runs of this group in the tiny test project.\n")
    git_commit(dest, env, "tiny params")
    proc = sh([*DVC, "repro"], dest, env, timeout=900)
    git_commit(dest, env, "dvc repro (tiny)")
    return dest, proc.stdout


def fresh_clone(origin: Path, dest: Path, env: dict) -> Path:
    """`git clone` of origin: committed files only, no DVC cache, no remote."""
    subprocess.run([*GIT, "clone", "-q", str(origin), str(dest)], check=True, env=env, capture_output=True)
    return dest


def porcelain(root: Path, env: dict) -> str:
    return sh(["git", "status", "--porcelain", "--untracked-files=all"], root, env).stdout
