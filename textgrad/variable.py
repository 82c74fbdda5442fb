"""A text value in a computation graph, with the textual feedback (gradients) it has received."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .config import resolve_engine
from .parallel import run_concurrently

if TYPE_CHECKING:
    from .config import EngineSpec
    from .engine.base import EngineLM

# A backward function returns the feedback to deliver instead of writing it itself, so that
# backward() can run sibling nodes concurrently and still attach gradients in a fixed order:
# concurrent and sequential runs must give the optimizer identical input.
PendingGradients = list[tuple["Variable", "Variable"]]
BackwardFn = Callable[["EngineLM"], PendingGradients]


class Gradients(list["Variable"]):
    """A variable's feedback in the order it arrived. TextGrad keeps a set and adds to it: `add` is here
    too (a feedback added twice is kept once), so code written for either works."""

    def add(self, gradient: Variable) -> None:
        if not any(g is gradient for g in self):
            self.append(gradient)


class Variable:
    def __init__(
        self,
        value: str,
        role_description: str,
        requires_grad: bool = True,
        predecessors: Iterable[Variable] = (),
    ) -> None:
        self.value = value
        self.role_description = role_description
        self.requires_grad = requires_grad
        self.predecessors: list[Variable] = list(predecessors)
        self.gradients = Gradients()
        self.backward_fn: BackwardFn | None = None

    def __repr__(self) -> str:
        short = self.value if len(self.value) <= 60 else self.value[:57] + "..."
        return f"Variable(role={self.role_description!r}, value={short!r}, grads={len(self.gradients)})"

    def __str__(self) -> str:
        return self.value

    def get_value(self) -> str:
        return self.value

    def set_value(self, value: str) -> None:
        self.value = value

    def get_role_description(self) -> str:
        return self.role_description

    def set_role_description(self, role_description: str) -> None:
        self.role_description = role_description

    def get_short_value(self, n_words_offset: int = 10) -> str:
        """The value, or its first and last n_words_offset words around "(...)" when it has more than twice that."""
        words = self.value.split()
        if len(words) <= 2 * n_words_offset:
            return self.value
        return " ".join(words[:n_words_offset]) + " (...) " + " ".join(words[-n_words_offset:])

    def get_gradient_text(self) -> str:
        return "\n\n".join(g.value for g in self.gradients)

    def reset_gradients(self) -> None:
        self.gradients = Gradients()

    def backward(self, engine: EngineSpec | None = None) -> None:
        """Propagate feedback from this variable to every ancestor that requires a gradient.

        Nodes are processed level by level (level = longest distance from self), so a node runs
        only after everything that depends on it has delivered its feedback; nodes of one level
        are independent and run concurrently (one LLM call each, typically).
        """
        engine = resolve_engine(engine)
        for level in _levels_from(self):
            runnable = [node for node in level if node.backward_fn is not None]
            results = run_concurrently([lambda n=node: n.backward_fn(engine) for node in runnable])
            for pending in results:
                for target, gradient in pending:
                    target.gradients.append(gradient)

    def generate_graph(self, print_gradients: bool = False) -> str:
        """The graph that led to this variable, as Graphviz DOT source (render it with `dot -Tpng` or
        graphviz.Source); a text, so that no Graphviz install is needed to build or test it."""
        nodes = [node for level in reversed(_levels_from(self)) for node in level]
        ids = {id(node): f"v{i}" for i, node in enumerate(nodes)}
        lines = ["digraph textgrad {", "  rankdir=TB;", "  node [shape=box];"]
        for node in nodes:
            parts = [node.role_description, node.get_short_value(5)]
            if print_gradients and node.gradients:
                parts.append("gradients: " + node.get_gradient_text())
            label = r"\n".join(_dot_text(part) for part in parts)
            style = "" if node.requires_grad else ", style=dashed"  # dashed: a constant, gets no feedback
            lines.append(f'  {ids[id(node)]} [label="{label}"{style}];')
        lines += [f"  {ids[id(parent)]} -> {ids[id(node)]};" for node in nodes for parent in node.predecessors]
        return "\n".join([*lines, "}", ""])


def _dot_text(text: str) -> str:
    """text inside a double-quoted DOT string: quotes and backslashes escaped, line breaks as \\n."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", r"\n")


def _levels_from(root: Variable) -> list[list[Variable]]:
    """Group the ancestors of root by longest path length from root, in deterministic order."""
    order: list[Variable] = []
    seen: set[int] = set()

    def visit(node: Variable) -> None:  # post-order: predecessors first
        if id(node) in seen:
            return
        seen.add(id(node))
        for parent in node.predecessors:
            visit(parent)
        order.append(node)

    visit(root)
    depth = {id(root): 0}
    for node in reversed(order):  # successors before predecessors
        for parent in node.predecessors:
            depth[id(parent)] = max(depth.get(id(parent), 0), depth[id(node)] + 1)
    levels: list[list[Variable]] = [[] for _ in range(max(depth.values()) + 1)]
    for node in order:  # discovery order within a level: example 1's feedback comes first
        levels[depth[id(node)]].append(node)
    return levels
