"""Every third-party package the code imports is declared in pyproject.toml: the library, the
stages and research/ in `dependencies`, the tests in those or the `test` extra. A package that
arrives only as another's dependency (numpy through torch, networkx through dvc) can leave with
that package's next release.

Read from the source (every import, late ones included) and from the installed project's own
metadata (importlib.metadata), pyproject.toml itself where Python reads TOML."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

from support.projects import REPO

DIST = "mnist-repro"
LOCAL = {"mnist_repro", "conftest", "support"}  # this repository's own modules


def imported_top_levels(paths, root: Path = REPO) -> dict[str, str]:
    """top-level module name -> the first file (relative to root) that imports it."""
    found = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], path.relative_to(root).as_posix())
    return found


def third_party(found: dict[str, str]) -> dict[str, str]:
    tests = {p.stem for p in (REPO / "tests").glob("*.py")}
    return {m: where for m, where in found.items()
            if m not in sys.stdlib_module_names and m not in LOCAL and m not in tests}


def requirements() -> list[str]:
    """pyproject.toml's requirements as PEP 508 strings (extras marked), read from the file where
    Python has tomllib (3.11+), else from the installed project's metadata."""
    try:
        import tomllib
    except ModuleNotFoundError:
        return metadata.requires(DIST) or []
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [*project.get("dependencies", []),
            *(f"{req}; extra == '{extra}'" for extra, reqs in project.get("optional-dependencies", {}).items()
              for req in reqs)]


def declared(extra: str | None = None) -> set[str]:
    """Normalised names of the distributions the project requires (with `extra`'s too)."""
    names = set()
    for req in requirements():
        name, _, marker = req.partition(";")
        in_extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        if in_extra is None or (extra and in_extra.group(1) == extra):
            names.add(normalise(re.split(r"[\s<>=!~\[(]", name.strip(), maxsplit=1)[0]))
    return names


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def undeclared(modules: dict[str, str], allowed: set[str]) -> list[str]:
    providers = metadata.packages_distributions()
    missing = []
    for module, where in sorted(modules.items()):
        dists = {normalise(d) for d in providers.get(module, [])}
        if not dists & allowed:
            missing.append(f"{module} (imported by {where}; provided by {', '.join(sorted(dists)) or 'nothing installed'})")
    return missing


def files(*folders) -> list[Path]:
    return [p for folder in folders for p in sorted((REPO / folder).rglob("*.py"))]


def test_the_library_stages_and_research_import_only_declared_packages():
    missing = undeclared(third_party(imported_top_levels(files("src", "stages", "research"))), declared())
    assert not missing, "imported but not in pyproject's dependencies: " + "; ".join(missing)


def test_the_tests_import_only_declared_packages():
    missing = undeclared(third_party(imported_top_levels(files("tests"))), declared("test"))
    assert not missing, "imported by tests but not in pyproject's dependencies or test extra: " + "; ".join(missing)


def test_the_check_sees_an_undeclared_import(tmp_path):
    source = tmp_path / "uses.py"
    source.write_text("import yaml\n\ndef late():\n    import torch.nn\n    from numpy import ones\n    from . import x\n")
    found = third_party(imported_top_levels([source], root=tmp_path))
    assert found == {"yaml": "uses.py", "torch": "uses.py", "numpy": "uses.py"}
    assert [m.split(" ")[0] for m in undeclared(found, {"pyyaml", "torch"})] == ["numpy"]
