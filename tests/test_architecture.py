"""The layering docs/architecture.md describes, checked on the source: every import (lazy ones included) goes down
or sideways, none closes a circle, and no module grows past 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "medground"
MAX_LINES = 400

LAYERS: dict[str, int] = {
    "errors": 0, "text_input": 0, "extras": 0,
    "config": 1, "results": 1,
    "images": 2, "geometry": 2, "text": 2, "metrics": 2, "readout": 2,
    "viz": 3, "outputs": 3,
    "backbones": 4,
    "loading": 5,
    "engine": 6,
    "grounder": 7,
    "cluster": 8, "datasets": 8, "reports": 8,
    "methods": 9,
    "evaluate": 10, "batch": 10,
    "app": 11, "toy": 11, "doctor": 11,
    "cli": 12,
    "": 0,  # the package's own __init__: the public names, imported by name on first use (no import statement)
}
"""Each top-level module or package of medground and its layer: a module may import from its own layer and below."""
ALLOWED_UPWARD: set[tuple[str, str]] = set()
"""Imports that run back up a layer, each justified in docs/architecture.md (there are none today)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The medground modules ``path`` imports, at module level or inside functions (``TYPE_CHECKING`` blocks, which
    never run, are left out)."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
               and getattr(block.test, "id", getattr(block.test, "attr", None)) == "TYPE_CHECKING"
               for node in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medground"):
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("medground")]
        for name in names:
            relative = name.removeprefix("medground").removeprefix(".")
            while relative and relative not in modules:
                relative = relative.rpartition(".")[0]
            if relative in modules:
                found.add(relative)
                break
    found.discard(module_name(path))
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imports_of(path, modules) for path in paths}


def layer(module: str) -> int:
    top = module.split(".")[0]
    assert top in LAYERS, f"medground.{module} has no layer: add it to LAYERS and to docs/architecture.md"
    return LAYERS[top]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in stack:
                low[node] = min(low[node], index[child])
    return found


def test_no_import_closes_a_circle():
    assert circles(import_graph()) == []


def test_the_circle_finder_finds_circles():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_go_down_or_sideways():
    upward = sorted((module, imported) for module, imports in import_graph().items() for imported in imports
                    if layer(imported) > layer(module) and (module, imported) not in ALLOWED_UPWARD)
    assert upward == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES
