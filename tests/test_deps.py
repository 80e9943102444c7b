"""dvc.yaml's code deps follow the code: each stage depends on exactly the Python files its
script imports, directly or through the library (the import closure), so a change to any of
them reruns the stage and a change to none of them does not.

The closure is read from the source (ast), not by importing: every `import mnist_repro...` /
`from mnist_repro... import` / relative import anywhere in a file, late imports inside
functions included. Every __init__.py of the package holds only a docstring (tests/test_layers.py checks), so
they are left out of the lists."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest
from support.projects import REPO

PACKAGE = "mnist_repro"
SRC = REPO / "src"


def module_file(name: str) -> Path | None:
    """src/mnist_repro/<...>.py for a dotted module name of the package, else None."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    parts = name.split(".")
    for path in (SRC.joinpath(*parts).with_suffix(".py"), SRC.joinpath(*parts, "__init__.py")):
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=None)  # each file parsed once, not once per stage that reaches it
def imported_modules(path: Path) -> frozenset[str]:
    """Dotted names of the package modules that `path` imports anywhere (names imported from a
    package count as its submodules when such a file exists)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = ".".join(path.relative_to(SRC).with_suffix("").parts) if path.is_relative_to(SRC) else ""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[:-node.level]  # here ends with the file's own name (or __init__)
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return frozenset(name for name in found if module_file(name))


def import_closure(script: Path) -> list[str]:
    """The script and every package file it reaches, as repo-relative paths, sorted."""
    seen, todo = set(), [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(module_file(name) for name in imported_modules(path))
    return sorted(p.relative_to(REPO).as_posix() for p in seen if p.name != "__init__.py")


def programs_of(cmd: str) -> list[Path]:
    """The stage script (one stages/*.py) and any package module the command runs with `python -m`
    (a launcher such as `python -m mnist_repro.training.launch ... stages/train.py`)."""
    words = cmd.split()
    scripts = [word for word in words if word.startswith("stages/") and word.endswith(".py")]
    assert len(scripts) == 1, f"expected one stages/*.py in {cmd!r}"
    modules = [module_file(b) for a, b in zip(words, words[1:]) if a == "-m" and module_file(b)]
    return [REPO / scripts[0], *modules]


def command_closure(cmd: str) -> list[str]:
    return sorted({path for program in programs_of(cmd) for path in import_closure(program)})


def code_deps(stage) -> list[str]:
    return sorted(str(dep.def_path) for dep in stage.deps if str(dep.def_path).endswith(".py"))


def test_a_module_run_with_python_m_is_in_the_closure():
    cmd = "python -m mnist_repro.core.config stages/download.py --root data"
    assert "src/mnist_repro/core/typed_yaml.py" in command_closure(cmd)
    assert "src/mnist_repro/core/data.py" in command_closure(cmd)  # stages/download.py's own


def test_the_closure_follows_late_and_relative_imports():
    """config imports models only inside a function, and models reaches torch, not the package."""
    closure = import_closure(REPO / "stages" / "check_params.py")
    assert "src/mnist_repro/core/config.py" in closure and "src/mnist_repro/core/models.py" in closure
    assert "src/mnist_repro/core/errors.py" in closure  # config's `from .errors import ParamsError`


def test_every_stage_depends_on_exactly_its_import_closure(repo_stages):
    wrong = {}
    for name, stage in repo_stages.items():
        if not stage.cmd:
            continue
        expected = command_closure(stage.cmd)
        if code_deps(stage) != expected:
            wrong[name] = expected
    if wrong:
        # One entry per stage definition (train@a and train@b share theirs), ready to paste.
        by_group = {}
        for name, expected in wrong.items():
            by_group.setdefault(name.split("@")[0], expected)
        listing = "\n".join(f"  {group}:\n" + "\n".join(f"      - {p}" for p in expected)
                            for group, expected in by_group.items())
        pytest.fail(f"dvc.yaml's code deps differ from the import closure of {len(wrong)} stages "
                    f"({', '.join(sorted(wrong)[:6])}{', ...' if len(wrong) > 6 else ''}); "
                    f"each stage's .py deps should be exactly:\n{listing}")
