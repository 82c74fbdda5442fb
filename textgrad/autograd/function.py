"""The base classes of differentiable text operations, as TextGrad names them.

A `Function` builds its output Variable in forward() and gives it a backward_fn that returns the
feedback for the inputs as (input, feedback) pairs rather than writing it: Variable.backward() runs
sibling nodes concurrently and still attaches all feedback in a fixed order. A `Module` is something
with trainable parameters (BlackboxLLM).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

from ..variable import Variable


class Function(ABC):
    def __call__(self, *args: Any, **kwargs: Any) -> Variable:
        return self.forward(*args, **kwargs)

    @abstractmethod
    def forward(self, *args: Any, **kwargs: Any) -> Variable:
        """The output Variable, with its backward_fn set."""


class Module(ABC):
    @abstractmethod
    def parameters(self) -> list[Variable]:
        """The variables an optimizer may train."""

    @abstractmethod
    def forward(self, *args: Any, **kwargs: Any) -> Variable:
        """The output Variable."""

    def __call__(self, *args: Any, **kwargs: Any) -> Variable:
        return self.forward(*args, **kwargs)

    def zero_grad(self) -> None:
        for parameter in self.parameters():
            parameter.reset_gradients()

    def named_parameters(self) -> Iterator[tuple[str, Variable]]:
        for parameter in self.parameters():
            yield parameter.get_role_description(), parameter
