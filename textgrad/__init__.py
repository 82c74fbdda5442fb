"""FedTextGrad's own textual-autograd engine; public names follow TextGrad's."""

from .config import get_backward_engine, set_backward_engine
from .engine import ChatEngine, EngineError, get_engine
from .engine_lm import EngineLM
from .functions import BlackboxLLM, StringBasedFunction, TextLoss, sum
from .optimizer import TGD, TextualGradientDescent, extract_improved_value
from .variable import Variable

__all__ = [
    "BlackboxLLM", "ChatEngine", "EngineError", "EngineLM", "StringBasedFunction", "TGD", "TextLoss",
    "TextualGradientDescent", "Variable", "extract_improved_value", "get_backward_engine", "get_engine",
    "set_backward_engine", "sum",
]
