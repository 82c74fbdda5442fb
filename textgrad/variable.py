"""A text value in a computation graph, with the textual feedback (gradients) it has received."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .parallel import run_concurrently

if TYPE_CHECKING:
    from .engine import ChatEngine

# A backward function returns the feedback to deliver instead of writing it itself, so that
# backward() can run sibling nodes concurrently and still attach gradients in a fixed order:
# concurrent and sequential runs must give the optimizer identical input.
PendingGradients = list[tuple["Variable", "Variable"]]
BackwardFn = Callable[["ChatEngine"], PendingGradients]


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
        self.gradients: list[Variable] = []
        self.backward_fn: BackwardFn | None = None

    def __repr__(self) -> str:
        short = self.value if len(self.value) <= 60 else self.value[:57] + "..."
        return f"Variable(role={self.role_description!r}, value={short!r}, grads={len(self.gradients)})"

    def get_value(self) -> str:
        return self.value

    def set_value(self, value: str) -> None:
        self.value = value

    def get_role_description(self) -> str:
        return self.role_description

    def get_gradient_text(self) -> str:
        return "\n\n".join(g.value for g in self.gradients)

    def reset_gradients(self) -> None:
        self.gradients = []

    def backward(self, engine: ChatEngine | None = None) -> None:
        """Propagate feedback from this variable to every ancestor that requires a gradient.

        Nodes are processed level by level (level = longest distance from self), so a node runs
        only after everything that depends on it has delivered its feedback; nodes of one level
        are independent and run concurrently (one LLM call each, typically).
        """
        from .config import get_backward_engine

        engine = engine or get_backward_engine()
        for level in _levels_from(self):
            runnable = [node for node in level if node.backward_fn is not None]
            results = run_concurrently([lambda n=node: n.backward_fn(engine) for node in runnable])
            for pending in results:
                for target, gradient in pending:
                    target.gradients.append(gradient)


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
