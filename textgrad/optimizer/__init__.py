"""Optimizers: textual gradient descent, and its variant that also sees the variable's recent past."""

from .momentum import MomentumHistory, TextualGradientDescentwithMomentum, TGDMomentum
from .optimizer import IMPROVED_REPLY, INSTRUCTIONS_REPLY, TGD, TextualGradientDescent, extract_improved_value

__all__ = ["IMPROVED_REPLY", "INSTRUCTIONS_REPLY", "TGD", "MomentumHistory", "TGDMomentum", "TextualGradientDescent",
           "TextualGradientDescentwithMomentum", "extract_improved_value"]
