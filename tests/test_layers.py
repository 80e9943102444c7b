"""The package's folders are its architecture: each subpackage imports only from the ones below it,
so nothing points back up and there is no cycle, and every package file is in one of them.

    report    -> parallel, compare, training, core   the report stage: sections, figures, markdown
    parallel  -> training, core            the matrix runner: pending DVC stages over slots
    compare   -> core                      statistics, the table's rows, run files, provenance
    training  -> core                      the Accelerate loop, launch, data on the device, run file
    core      -> (nothing)                 params, MNIST on disk, files, errors, CLI, architectures

Imports are read from the source (tests/test_deps.py's reader: late and relative imports count).
"""

from __future__ import annotations

from pathlib import Path

from test_deps import PACKAGE, SRC, imported_modules

# Each subpackage and the subpackages it may import from (besides itself).
MAY_IMPORT = {
    "core": set(),
    "training": {"core"},
    "compare": {"core"},
    "parallel": {"core", "training"},
    "report": {"core", "training", "compare", "parallel"},
}


def subpackage(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == PACKAGE else None


def package_files() -> list[Path]:
    return sorted((SRC / PACKAGE).rglob("*.py"))


def test_every_module_lives_in_a_subpackage():
    loose = [p.relative_to(SRC).as_posix() for p in package_files()
             if p.parent == SRC / PACKAGE and p.name != "__init__.py"]
    assert not loose, f"modules outside the subpackages {sorted(MAY_IMPORT)}: {loose}"
    folders = {p.parent.name for p in package_files() if p.parent != SRC / PACKAGE}
    assert folders == set(MAY_IMPORT), f"subpackages {sorted(folders)} vs the layers {sorted(MAY_IMPORT)}"


def test_no_subpackage_imports_one_above_it():
    upward = []
    for path in package_files():
        here = path.relative_to(SRC / PACKAGE).parts[0]
        if here not in MAY_IMPORT:
            continue
        for name in imported_modules(path):
            there = subpackage(name)
            if there and there != here and there not in MAY_IMPORT[here]:
                upward.append(f"{path.relative_to(SRC).as_posix()} imports {name} ({here} -> {there})")
    assert not upward, "imports against the layers:\n" + "\n".join(sorted(upward))


def test_the_layers_have_no_cycle():
    """MAY_IMPORT itself is a DAG (a cycle there would let two folders import each other)."""
    order, done = [], set()

    def visit(node, stack):
        assert node not in stack, f"cycle through {' -> '.join([*stack, node])}"
        if node not in done:
            for below in MAY_IMPORT[node]:
                visit(below, [*stack, node])
            done.add(node)
            order.append(node)

    for layer in MAY_IMPORT:
        visit(layer, [])
    assert order[0] == "core"


def test_no_module_cycle():
    """Module by module too (inside a subpackage the layers allow any order): a depth-first walk of
    the import graph finds no module that imports itself through others."""
    graph = {}
    for path in package_files():
        dotted = ".".join(path.relative_to(SRC).with_suffix("").parts)
        graph[dotted.removesuffix(".__init__")] = set()
        for name in imported_modules(path):
            graph[dotted.removesuffix(".__init__")].add(name)
    state = {}

    def visit(node, stack):
        if state.get(node) == "done" or node not in graph:
            return
        assert state.get(node) != "open", f"import cycle: {' -> '.join([*stack, node])}"
        state[node] = "open"
        for nxt in sorted(graph[node]):
            visit(nxt, [*stack, node])
        state[node] = "done"

    for node in sorted(graph):
        visit(node, [])


def test_every_package_init_is_only_a_docstring():
    """So a stage's code deps (tests/test_deps.py) can leave every __init__.py out."""
    import ast

    for init in (SRC / PACKAGE).rglob("__init__.py"):
        body = ast.parse(init.read_text()).body
        assert all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body), \
            f"{init.relative_to(SRC)} runs code: move it into a module of its package"
