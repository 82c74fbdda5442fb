"""The layout of utils/ (issue 25): a few subpackages named after the method's parts, short files, no import
cycle, and a plain run that loads neither the estimator nor matplotlib before its first request."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

from bench.fake_server import FakeServer
from bench.first_request import first_request

REPO = Path(__file__).resolve().parents[1]
UTILS = REPO / "utils"
SUBPACKAGES = {"federated", "tasks", "privacy", "estimate", "reporting"}


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports_at_the_top(path: Path) -> set[str]:
    """utils modules a file imports when it is imported (not inside functions, not for type checking)."""
    package = _module(path) if path.name == "__init__.py" else _module(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {name for name in names if name.startswith("utils")}
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module(path): path for path in UTILS.rglob("*.py")}
    return {module: {name for name in _imports_at_the_top(path) if name in files and name != module}
            for module, path in files.items()}


def test_utils_is_a_few_subpackages_and_at_most_eight_modules() -> None:
    assert {p.name for p in UTILS.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == SUBPACKAGES
    assert len(list(UTILS.glob("*.py"))) <= 8


def test_no_file_of_ours_outside_tests_is_over_400_lines() -> None:
    ours = [*UTILS.rglob("*.py"), *(REPO / "bench").rglob("*.py"), *(REPO / "fedtextgrad_flower").rglob("*.py"),
            REPO / "main.py", *REPO.glob("train_*.py")]
    long = {str(p.relative_to(REPO)): n for p in ours if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert long == {}


def test_the_import_graph_finder_sees_relative_and_absolute_imports() -> None:
    graph = import_graph()
    assert "utils.federated.client" in graph["utils.federated.rounds"]        # from .client import ...
    assert "utils.tasks.registry" in graph["utils.federated.experiment"]      # from utils.tasks.registry import ...
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter({"a": {"b"}, "b": {"a"}}).prepare()


def test_utils_modules_import_each_other_without_a_cycle() -> None:
    graphlib.TopologicalSorter(import_graph()).prepare()  # raises CycleError naming the cycle


def test_a_plain_run_sends_its_first_request_before_loading_the_estimator_or_matplotlib(tmp_path: Path) -> None:
    with FakeServer() as server:
        run = first_request(server.base_url, server.port, tmp_path)
    assert run.exit_code == 0 and run.modules, "the run did not reach the server"
    assert "utils.federated.rounds" in run.modules  # the probe saw a run that was ready to train
    assert {name: modules for name, modules in run.heavy().items() if modules} == {}
