"""The worker's modules form no import circle, counting imports made only for type checking (a
circle there still ties two modules' designs together and breaks as soon as one import moves)."""

from __future__ import annotations

import ast
from pathlib import Path

import aigw_worker

PACKAGE = Path(aigw_worker.__file__).parent


def _imports(path: Path) -> set[str]:
    """The package-local modules `path` imports, anywhere in it (TYPE_CHECKING blocks too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("aigw_worker."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("aigw_worker."))
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph`, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_worker_modules_import_each_other_without_a_circle() -> None:
    modules = {p.stem: p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    graph = {name: _imports(path) & set(modules) for name, path in modules.items()}
    assert "call" in graph["worker"]  # the test sees the imports it is about
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_circle_finder_finds_one() -> None:
    assert _cycle({"call": {"worker"}, "worker": {"call"}}) == ["call", "worker", "call"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
