"""Nothing stale: every module, script and repository path that the prose names exists.

Read as a newcomer reads them: the README, docs/, research/README.md, reference/variants.md,
dvc.yaml's comments and commands, the Slurm scripts' comments, and every string literal in the
library, the stages and research/ (error messages tell users what to run). A name is checked
where it is unambiguous:

- ``python -m X``: X imports (a module of this repository, or an installed one);
- a Markdown link to a relative path, or a path in backticks, in a command or in a string that
  starts at one of the repository's top-level folders (``src/``, ``docs/``, ``metrics/`` ...)
  or names a top-level file (``params.yaml``, ``INTERFACES.md``): it exists in the checkout,
  with ``<variant>``, ``{seed}``, ``${item.variant}`` and ``*`` read as wildcards.

Pipeline outputs that a clone does not hold (``data/``, ``models/``, ``checkpoints/``,
``dvc_plots/``) and paths inside test fixtures' temporary projects are not checked; a path that
dvc.yaml declares as a stage's output counts as existing (the pipeline writes it).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Outputs of a run, not files of the repository.
NOT_IN_A_CLONE = ("data/", "models/", "checkpoints/", "dvc_plots/", "build/", "dist/", ".dvc/cache", ".dvc/tmp")


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
        return out.split()
    except (OSError, subprocess.CalledProcessError):  # a copy without git: every file is the checkout
        return [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file() and ".git" not in p.parts]


def top_level() -> tuple[set[str], set[str]]:
    """The repository's top-level folders and files (tracked ones)."""
    folders, files = set(), set()
    for path in tracked_files():
        head, sep, _ = path.partition("/")
        (folders if sep else files).add(head)
    return folders, files


def prose_sources() -> dict[str, str]:
    """Each text a person reads, by its path: Markdown, dvc.yaml, params.yaml, the Slurm scripts."""
    texts = {}
    for path in tracked_files():
        if path.startswith("tests/") or path.startswith("metrics/"):
            continue  # fixtures and generated results: their paths are the tests' own
        if path.endswith((".md", ".sbatch", ".sh")) or path in ("dvc.yaml", "params.yaml", ".ci/run"):
            texts[path] = (REPO / path).read_text()
    return texts


def code_strings() -> dict[str, str]:
    """The string literals of the library, the stages and research/ (messages, help, docstrings)."""
    texts = {}
    for path in tracked_files():
        if path.endswith(".py") and path.startswith(("src/", "stages/", "research/")):
            tree = ast.parse((REPO / path).read_text())
            texts[path] = "\n".join(node.value for node in ast.walk(tree)
                                    if isinstance(node, ast.Constant) and isinstance(node.value, str))
    return texts


MODULE = re.compile(r"python3? -m ([A-Za-z_][\w.]*)")
DOTTED = re.compile(r"(?<![\w./-])(mnist_repro(?:\.\w+)+)")
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
WRITTEN = re.compile(r"--out\s+\\?\s*([\w./-]+)")
PLACEHOLDER = re.compile(r"\$\{[^}]*\}|\{[^}]*\}|<[^>]*>|\$\w+")


def module_exists(name: str) -> bool:
    if name.startswith("mnist_repro"):
        parts = name.split(".")
        base = REPO / "src" / Path(*parts)
        return base.with_suffix(".py").exists() or (base / "__init__.py").exists()
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def library_name_exists(dotted: str) -> bool:
    """``mnist_repro.a.b.c``: a module of the library, maybe followed by names defined in it."""
    parts = dotted.split(".")
    where = REPO / "src" / parts[0]
    for part in parts[1:]:
        if (where / part / "__init__.py").exists():
            where = where / part
            continue
        return (where / f"{part}.py").exists() or where != REPO / "src" / parts[0]
    return True


def trimmed(candidate: str) -> str:
    """A path as the text means it: no sentence punctuation, no closing brace of a ${...} around it."""
    candidate = candidate.rstrip("/.,;:")
    if candidate.endswith("}") and candidate.count("{") < candidate.count("}"):
        candidate = candidate[:-1]
    return candidate


@functools.lru_cache(maxsize=1)  # read once: parsing dvc.yaml for each of ~400 names took seconds
def declared_outputs() -> tuple[str, ...]:
    """dvc.yaml's output paths as glob patterns: a path the pipeline writes exists once it has run."""
    import yaml

    patterns = []
    for stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values():
        for key in ("outs", "metrics", "plots"):
            for out in stage.get(key, []):
                patterns.append(PLACEHOLDER.sub("*", next(iter(out)) if isinstance(out, dict) else out))
    return tuple(patterns)


def path_exists(candidate: str, relative_to: Path) -> bool:
    import fnmatch

    pattern = PLACEHOLDER.sub("*", candidate)
    for out in declared_outputs():
        if fnmatch.fnmatch(pattern, out) or fnmatch.fnmatch(pattern, out + "/*") or out.startswith(pattern + "/"):
            return True
    for base in (REPO, relative_to):
        if any(base.glob(pattern)) if "*" in pattern else (base / pattern).exists():
            return True
    return False


def paths_named(text: str, folders: set[str], files: set[str]) -> set[str]:
    """Paths in a text that start at a top-level folder or name a top-level or upper-case file."""
    roots = "|".join(re.escape(f) for f in sorted(folders))
    found = set()
    if roots:
        for m in re.finditer(rf"(?<![\w./$-])((?:{roots})/[\w.*<>{{}}$/@-]*)", text):
            found.add(m.group(1))
    for m in re.finditer(r"(?<![\w./-])([A-Z][A-Z_]+\.md)\b", text):  # INTERFACES.md, README.md ...
        found.add(m.group(1))
    for name in files:
        if "." in name and re.search(rf"(?<![\w./-]){re.escape(name)}\b", text):
            found.add(name)
    return {trimmed(p) for p in found if not p.startswith(NOT_IN_A_CLONE) and "..." not in p}


def stale(texts: dict[str, str]) -> list[str]:
    folders, files = top_level()
    problems = []
    for where, text in texts.items():
        here = (REPO / where).parent
        for name in sorted(set(MODULE.findall(text))):
            if not module_exists(name):
                problems.append(f"{where}: `python -m {name}`: no such module")
        for name in sorted(set(DOTTED.findall(text)) - set(MODULE.findall(text))):
            if not library_name_exists(name):
                problems.append(f"{where}: {name}: no such module in src/")
        links = {trimmed(t) for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)}
        written = {trimmed(p) for p in WRITTEN.findall(text)}  # a command's --out: the file it creates
        for path in sorted((links | paths_named(text, folders, files)) - written):
            if not path_exists(path, here):
                problems.append(f"{where}: {path}: no such path")
    return problems


def test_prose_names_only_modules_and_paths_that_exist():
    problems = stale(prose_sources())
    assert not problems, "stale references:\n" + "\n".join(problems)


def test_code_strings_name_only_modules_and_paths_that_exist():
    problems = stale(code_strings())
    assert not problems, "stale references:\n" + "\n".join(problems)


@pytest.mark.parametrize("text, expected", [
    ("run `python -m mnist_repro.nowhere x`", ["`python -m mnist_repro.nowhere`: no such module"]),
    ("see [the spec](INTERFACES_NOT_HERE.md)", ["INTERFACES_NOT_HERE.md: no such path"]),
    ("the record (mnist_repro.nowhere) and mnist_repro.compare.run_files.read_searches",
     ["mnist_repro.nowhere: no such module in src/"]),
    ("slurm script ${SCRIPT:?submit with slurm/no_such.sh} and metrics/runs/$variant/seed_$seed.json",
     ["slurm/no_such.sh: no such path"]),
    ("written to metrics/nothing_like_this/<variant>.json", ["metrics/nothing_like_this/<variant>.json: no such path"]),
    ("python -m mnist_repro.training.launch and docs/pipeline.md and metrics/runs/<variant>/seed_1.json", []),
    ("outputs under data/MNIST and models/x.pt are not in a clone", []),
    ("a stage writes metrics/table/<step>_<variant>.json", []),
    ("`python research/search.py x --out metrics/nothing_yet/x.json` creates it", []),  # a command's output
])
def test_the_checker_finds_what_is_missing_and_only_that(text, expected):
    problems = [p.split(": ", 1)[1] for p in stale({"README.md": text})]
    assert problems == expected
