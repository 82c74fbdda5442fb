"""FedTextGrad's own textual-autograd engine, laid out as TextGrad lays out its package.

The names load on first use (PEP 562): `import textgrad.serving.backends` (the engine-name grammar that
utils.config checks flags with) must not pay for the HTTP client and the engines behind these names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import autograd, engine, optimizer, serving  # noqa: F401 - tg.autograd etc., loaded on use
    from .autograd import FormattedLLMCall, LLMCall, StringBasedFunction, aggregate, sum
    from .config import get_backward_engine, set_backward_engine
    from .engine import ChatEngine, ChatOpenAI, EngineLM, get_engine
    from .errors import EngineError
    from .loss import TextLoss
    from .model import BlackboxLLM
    from .optimizer import TGD, TextualGradientDescent, TGDMomentum, extract_improved_value
    from .variable import Variable

_HOMES = {
    "get_backward_engine": ".config", "set_backward_engine": ".config",
    "ChatEngine": ".engine", "ChatOpenAI": ".engine", "EngineLM": ".engine", "get_engine": ".engine",
    "EngineError": ".errors", "BlackboxLLM": ".model", "TextLoss": ".loss",
    "FormattedLLMCall": ".autograd", "LLMCall": ".autograd", "StringBasedFunction": ".autograd",
    "aggregate": ".autograd", "sum": ".autograd",
    "TGD": ".optimizer", "TGDMomentum": ".optimizer", "TextualGradientDescent": ".optimizer",
    "extract_improved_value": ".optimizer", "Variable": ".variable",
}
_SUBPACKAGES = ("autograd", "engine", "optimizer", "serving")

__all__ = [
    "BlackboxLLM", "ChatEngine", "ChatOpenAI", "EngineError", "EngineLM", "FormattedLLMCall", "LLMCall",
    "StringBasedFunction", "TGD", "TGDMomentum", "TextLoss", "TextualGradientDescent", "Variable", "aggregate",
    "extract_improved_value", "get_backward_engine", "get_engine", "set_backward_engine", "sum",
]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:  # tg.autograd.FormattedLLMCall, as TextGrad's tutorials write it
        return importlib.import_module(f".{name}", __name__)
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'textgrad' has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value
