"""The backward engine, as in TextGrad's `set_backward_engine`, and how every call that takes an engine
turns what it was given into one. The backward engine belongs to the current runtime (one per process
unless a caller makes its own: textgrad.serving.runtime), not to a module global."""

from __future__ import annotations

from .engine import get_engine
from .engine.base import EngineLM
from .serving.runtime import current_runtime

Engine = EngineLM
EngineSpec = EngineLM | str


def as_engine(engine: EngineSpec) -> EngineLM:
    """An engine name through get_engine (so it gets our cache, cap and budgets); an engine as it is."""
    if isinstance(engine, str):
        return get_engine(engine)
    if not callable(getattr(engine, "chat", None)):
        raise TypeError(f"{type(engine).__name__} is not an engine: pass an engine name such as 'gpt-4o', "
                        "an engine from tg.get_engine(...), or an instance of a tg.EngineLM subclass")
    return engine


def resolve_engine(engine: EngineSpec | None) -> EngineLM:
    """The engine a loss, model, optimizer or backward() uses: the one given, else the backward engine."""
    return get_backward_engine() if engine is None else as_engine(engine)


def set_backward_engine(engine: EngineSpec, override: bool = True) -> None:
    """The engine of models, losses, optimizers and backward() given none. With override=False an engine
    already set is kept."""
    runtime = current_runtime()
    if runtime.backward_engine is not None and not override:
        return
    runtime.backward_engine = as_engine(engine)


def get_backward_engine() -> EngineLM:
    engine = current_runtime().backward_engine
    if engine is None:
        raise ValueError("no engine given and no backward engine set: pass engine=..., "
                         "or call tg.set_backward_engine('gpt-4o') first")
    return engine
