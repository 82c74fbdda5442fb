"""FedTextGrad's own textual-autograd engine; public names follow TextGrad's.

The names load on first use (PEP 562): `import textgrad.endpoints` (the engine-name grammar that
utils.config checks flags with) must not pay for the openai SDK, which takes a second or more to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import get_backward_engine, set_backward_engine
    from .engine import ChatEngine, get_engine
    from .engine_lm import EngineLM
    from .errors import EngineError
    from .functions import BlackboxLLM, StringBasedFunction, TextLoss, sum
    from .optimizer import TGD, TextualGradientDescent, extract_improved_value
    from .variable import Variable

_HOMES = {
    "get_backward_engine": ".config", "set_backward_engine": ".config",
    "ChatEngine": ".engine", "get_engine": ".engine", "EngineError": ".errors", "EngineLM": ".engine_lm",
    "BlackboxLLM": ".functions", "StringBasedFunction": ".functions", "TextLoss": ".functions", "sum": ".functions",
    "TGD": ".optimizer", "TextualGradientDescent": ".optimizer", "extract_improved_value": ".optimizer",
    "Variable": ".variable",
}

__all__ = [
    "BlackboxLLM", "ChatEngine", "EngineError", "EngineLM", "StringBasedFunction", "TGD", "TextLoss",
    "TextualGradientDescent", "Variable", "extract_improved_value", "get_backward_engine", "get_engine",
    "set_backward_engine", "sum",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'textgrad' has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value
