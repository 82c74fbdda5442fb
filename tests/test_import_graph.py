"""The engine layer's modules import each other without a cycle, at the top of each file.

A cycle held together by imports inside functions breaks as soon as someone moves one of them to the
top; the issue that split textgrad/engine.py asked for none."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "textgrad"


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imported_siblings(node: ast.AST) -> set[str]:
    """Modules of the package that an import statement names (relative imports only)."""
    if not isinstance(node, ast.ImportFrom) or node.level != 1:
        return set()
    if node.module:
        return {node.module.split(".")[0]}
    return {alias.name for alias in node.names}  # from . import x


def _top_level_imports(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and _is_type_checking(node):
            continue  # never run: no cycle at run time
        found |= _imported_siblings(node)
    return found


def _function_imports(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(func):
                found |= _imported_siblings(node)
    return found


def _graph() -> dict[str, set[str]]:
    return {path.stem: _top_level_imports(ast.parse(path.read_text(encoding="utf-8")))
            for path in PACKAGE.glob("*.py") if path.stem != "__init__"}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, as the modules along it, or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":  # open modules are exactly those on the current path
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target, path + [target])):
                return found
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module, [module])):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_textgrad_modules_import_each_other_without_a_cycle() -> None:
    graph = _graph()
    assert {"engine", "endpoints", "errors", "stats", "context", "local_server", "settings"} <= set(graph)
    assert _cycle(graph) is None


def test_the_engine_layer_imports_its_siblings_at_the_top_only() -> None:
    layer = ("engine", "endpoints", "errors", "stats", "context", "local_server", "settings", "server_pool",
             "tokenizers", "slots", "cache", "structured", "budget", "interrupt")
    late = {name: imports for name in layer
            if (imports := _function_imports(ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))))}
    assert late == {}
