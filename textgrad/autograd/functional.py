"""`sum` and `aggregate`: several variables (typically a batch's losses) joined under one root, so that
one backward() call reaches them all. Both join the values with a newline, as TextGrad does."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import prompts
from ..serving import budget
from ..variable import PendingGradients, Variable

if TYPE_CHECKING:
    from ..engine.base import EngineLM

AGGREGATE_MAX_TOKENS = 256


def _joined(variables: list[Variable]) -> Variable:
    roles = ", ".join(dict.fromkeys(v.role_description for v in variables))  # each role once, in order
    return Variable("\n".join(v.value for v in variables), prompts.SUM_ROLE.format(roles=roles),
                    requires_grad=any(v.requires_grad for v in variables), predecessors=variables)


def _to_inputs(variables: list[Variable], feedback: list[Variable]) -> PendingGradients:
    return [(var, g) for var in variables if var.requires_grad for g in feedback]


def sum(variables: list[Variable]) -> Variable:  # noqa: A001 - TextGrad's public name
    """Join several losses into one; backward hands each input whatever feedback the total received.

    Each loss still sends its own judgement to its inputs in its own backward step, so summing only
    gathers B examples under one root for a single backward() call.
    """
    total = _joined(variables)
    total.backward_fn = lambda engine: _to_inputs(variables, list(total.gradients))
    return total


def aggregate(variables: list[Variable]) -> Variable:
    """As sum, but feedback the aggregate receives from several places reaches its inputs as one text:
    the backward engine condenses it in one call (one feedback passes as it is)."""
    total = _joined(variables)

    def backward(engine: EngineLM) -> PendingGradients:
        if len(total.gradients) <= 1:
            return _to_inputs(variables, list(total.gradients))
        items = budget.Droppable(items=tuple(g.value for g in total.gradients), noun="feedback items")
        condensed = budget.fitted_chat(engine, system=prompts.AGGREGATE_SYSTEM, user=prompts.AGGREGATE_TEMPLATE,
                                       fields={"role": total.role_description, "count": str(len(total.gradients)),
                                               "feedback": items}, max_tokens=AGGREGATE_MAX_TOKENS)
        return _to_inputs(variables, [Variable(condensed, f"feedback to the {total.role_description}",
                                               requires_grad=False)])

    total.backward_fn = backward
    return total
