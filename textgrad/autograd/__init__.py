"""Differentiable text operations, where TextGrad users import them from."""

from .function import Function, Module
from .functional import aggregate, sum
from .llm_ops import FormattedLLMCall, LLMCall
from .string_based_ops import StringBasedFunction

__all__ = ["FormattedLLMCall", "Function", "LLMCall", "Module", "StringBasedFunction", "aggregate", "sum"]
