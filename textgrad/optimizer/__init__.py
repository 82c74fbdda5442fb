"""Optimizers: textual gradient descent."""

from .optimizer import IMPROVED_REPLY, INSTRUCTIONS_REPLY, TGD, TextualGradientDescent, extract_improved_value

__all__ = ["IMPROVED_REPLY", "INSTRUCTIONS_REPLY", "TGD", "TextualGradientDescent", "extract_improved_value"]
