"""Differentiable text functions: each builds an output Variable and knows how to send feedback back."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from . import budget, prompts
from .config import resolve_engine
from .errors import ContextOverflowError
from .variable import PendingGradients, Variable

if TYPE_CHECKING:
    from .config import EngineSpec
    from .engine import ChatEngine


class BlackboxLLM:
    """A model call whose system prompt is a Variable: the thing we train. Without an engine, the backward one."""

    def __init__(self, engine: EngineSpec | None = None, system_prompt: Variable | str | None = None,
                 max_tokens: int = 512, feedback_max_tokens: int = 256) -> None:
        self.engine = resolve_engine(engine)
        if isinstance(system_prompt, str):
            system_prompt = Variable(system_prompt, "system prompt to the language model", requires_grad=False)
        self.system_prompt = system_prompt
        self.max_tokens = max_tokens
        self.feedback_max_tokens = feedback_max_tokens
        self.feedback_skipped = 0  # feedback calls given up because they could not fit the context window

    def parameters(self) -> list[Variable]:
        """What an optimizer may train: the system prompt, when it requires a gradient."""
        return [self.system_prompt] if self.system_prompt is not None and self.system_prompt.requires_grad else []

    def __call__(self, x: Variable) -> Variable:
        system = self.system_prompt.value if self.system_prompt is not None else None
        answer = budget.generate(self.engine, x.value, system_prompt=system, max_tokens=self.max_tokens)
        parents = [x] if self.system_prompt is None else [self.system_prompt, x]
        response = Variable(answer, "response from the language model", requires_grad=True, predecessors=parents)

        def backward(engine: ChatEngine) -> PendingGradients:
            judgement = response.get_gradient_text()
            if not judgement:
                return []
            pending: PendingGradients = []
            for parent in parents:
                if not parent.requires_grad:
                    continue
                # The text under review weighs double: feedback on a prompt it cannot see is useless.
                fields = {"role": parent.role_description, "variable": budget.Cuttable.text(parent.value, 2.0),
                          "input": budget.Cuttable.text(x.value), "output": budget.Cuttable.text(response.value),
                          "judgement": budget.Cuttable.text(judgement)}
                try:
                    feedback = budget.fitted_chat(engine, system=prompts.FEEDBACK_SYSTEM,
                                                  user=prompts.FEEDBACK_TEMPLATE, fields=fields,
                                                  max_tokens=self.feedback_max_tokens)
                except ContextOverflowError:
                    self.feedback_skipped += 1  # the engine counted it too; the other examples' feedback remains
                    continue
                pending.append((parent, Variable(feedback, f"feedback to the {parent.role_description}",
                                                 requires_grad=False)))
            return pending

        response.backward_fn = backward
        return response


class StringBasedFunction:
    """A plain Python function over variables, e.g. an exact-match scorer: fn(**inputs) gets the Variables
    themselves (read `.value`), as in TextGrad, and its result, turned into text, is the output's value.

    Its output text is itself the judgement: it reaches the inputs as their feedback without an
    LLM call, which is what makes a 0/1 task score cheap to differentiate.
    """

    def __init__(self, fn: Callable[..., str], function_purpose: str) -> None:
        self.fn = fn
        self.function_purpose = function_purpose

    def __call__(self, inputs: dict[str, Variable], role_description: str = "output of a string function") -> Variable:
        value = self.fn(**inputs)
        output = Variable(str(value), role_description, requires_grad=True, predecessors=inputs.values())

        def backward(engine: ChatEngine) -> PendingGradients:
            text = f"{self.function_purpose}: {output.value}"
            if output.gradients:
                text += "\n" + output.get_gradient_text()
            return [(var, Variable(text, f"feedback to the {var.role_description}", requires_grad=False))
                    for var in inputs.values() if var.requires_grad]

        output.backward_fn = backward
        return output


class TextLoss:
    """An LLM-written evaluation of a variable. The evaluation text is the variable's feedback.
    Without an engine, the backward engine writes it."""

    def __init__(self, eval_system_prompt: Variable | str, engine: EngineSpec | None = None,
                 max_tokens: int = 256) -> None:
        if isinstance(eval_system_prompt, Variable):
            eval_system_prompt = eval_system_prompt.value
        self.eval_system_prompt = eval_system_prompt
        self.engine = resolve_engine(engine)
        self.max_tokens = max_tokens

    def __call__(self, instance: Variable) -> Variable:
        evaluation = budget.generate(self.engine, instance.value, system_prompt=self.eval_system_prompt,
                                     max_tokens=self.max_tokens)
        loss = Variable(evaluation, prompts.TEXT_LOSS_ROLE, requires_grad=True, predecessors=[instance])

        def backward(engine: ChatEngine) -> PendingGradients:
            if not instance.requires_grad:
                return []
            return [(instance, Variable(loss.value, f"feedback to the {instance.role_description}",
                                        requires_grad=False))]

        loss.backward_fn = backward
        return loss


def sum(variables: list[Variable]) -> Variable:  # noqa: A001 - TextGrad's public name
    """Join several losses into one; backward hands each input whatever feedback the total received.

    Each loss still sends its own judgement to its inputs in its own backward step, so summing only
    gathers B examples under one root for a single backward() call.
    """
    total = Variable("\n\n".join(v.value for v in variables), "sum of losses", requires_grad=True,
                     predecessors=variables)

    def backward(engine: ChatEngine) -> PendingGradients:
        pending: PendingGradients = []
        for var in variables:
            if var.requires_grad:
                pending.extend((var, g) for g in total.gradients)
        return pending

    total.backward_fn = backward
    return total
