"""The project's modules import each other without a cycle: textgrad, utils, fedtextgrad_flower, main.py and
the train_*.py modules, at the top of a file or inside a function alike.

A cycle held together by imports inside functions breaks as soon as someone moves one of them to the
top, so those count too (only `if TYPE_CHECKING:` blocks, which never run, are left out); and textgrad
imports its own modules at the top only."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("textgrad", "utils", "fedtextgrad_flower")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_files() -> dict[str, Path]:
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    files += [ROOT / "main.py", *sorted(ROOT.glob("train_*.py"))]
    return {_module_name(path): path for path in files}


MODULES = _project_files()


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _walk_running_code(tree: ast.AST) -> list[ast.AST]:
    """Every node of tree outside `if TYPE_CHECKING:` blocks."""
    found: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        found.append(node)
        stack.extend(child for child in ast.iter_child_nodes(node) if not _is_type_checking(child))
    return found


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute name an ImportFrom names (`..serving` in textgrad.engine.base -> textgrad.serving)."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
    base = package[:len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _packages_above(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _imports(module: str, tree: ast.AST) -> set[str]:
    """The project modules that running this module's code may import. A module named is an edge, and so
    is every package above it, except the packages above `module` itself: Python has those in sys.modules
    before `module` runs, so reaching them again is no cycle (naming one explicitly still is an edge)."""
    own = _packages_above(module)
    named: set[str] = set()
    for node in _walk_running_code(tree):
        if isinstance(node, ast.Import):
            named |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            # `from .serving import budget`: the module budget; `from . import x` of a name: the package
            named |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    found = named | {package for name in named for package in _packages_above(name)} - own
    return (found & set(MODULES)) - {module}


def _graph() -> dict[str, set[str]]:
    return {module: _imports(module, ast.parse(path.read_text(encoding="utf-8"))) for module, path in MODULES.items()}


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


def test_imports_resolve_to_project_modules() -> None:
    graph = _graph()
    # relative (two levels up), absolute, `from package import module`, and the packages on the way (but
    # not the module's own: textgrad and textgrad.engine are set up before textgrad.engine.base runs)
    assert {"textgrad.serving.cache", "textgrad.serving"} <= graph["textgrad.engine.base"]
    assert not {"textgrad", "textgrad.engine"} & graph["textgrad.engine.base"]
    assert "textgrad" in graph["utils.federated.client"]
    assert "textgrad.serving.budget" in graph["utils.tasks.evaluation"]
    assert "textgrad.serving.budget" in graph["textgrad.structured"]
    assert "utils.federated.phases" in graph["main"]  # imported inside run(): counted all the same
    assert "textgrad.config" not in graph["textgrad.model"]  # only under TYPE_CHECKING


def test_the_project_has_no_import_cycle() -> None:
    graph = _graph()
    assert {"textgrad.serving.runtime", "textgrad.engine.openai", "utils.federated.client", "fedtextgrad_flower.server_app",
            "main", "train_homo_fed"} <= set(graph)
    assert _cycle(graph) is None


def test_textgrad_imports_its_own_modules_at_the_top_only() -> None:
    late = {}
    for module, path in MODULES.items():
        if not module.startswith("textgrad"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        inner = [node for func in ast.walk(tree) if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef)
                 for node in _walk_running_code(func) if isinstance(node, ast.Import | ast.ImportFrom)]
        if names := {name for node in inner for name in _imports(module, node)}:
            late[module] = names
    assert late == {}
