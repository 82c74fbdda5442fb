"""`StringBasedFunction`: a plain Python function over variables in the graph, with no LLM call."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from ..variable import PendingGradients, Variable
from .function import Function

if TYPE_CHECKING:
    from ..engine.base import EngineLM


class StringBasedFunction(Function):
    """A plain Python function over variables, e.g. an exact-match scorer: fn(**inputs) gets the Variables
    themselves (read `.value`), as in TextGrad, and its result, turned into text, is the output's value.

    Its output text is itself the judgement: it reaches the inputs as their feedback without an
    LLM call, which is what makes a 0/1 task score cheap to differentiate.
    """

    def __init__(self, fn: Callable[..., object], function_purpose: str) -> None:
        self.fn = fn
        self.function_purpose = function_purpose

    def forward(self, inputs: Mapping[str, Variable],  # type: ignore[override]
                response_role_description: str = "output of a string function") -> Variable:
        value = self.fn(**inputs)
        output = Variable(str(value), response_role_description, requires_grad=True, predecessors=inputs.values())

        def backward(engine: EngineLM) -> PendingGradients:
            text = f"{self.function_purpose}: {output.value}"
            if output.gradients:
                text += "\n" + output.get_gradient_text()
            return [(var, Variable(text, f"feedback to the {var.role_description}", requires_grad=False))
                    for var in inputs.values() if var.requires_grad]

        output.backward_fn = backward
        return output
