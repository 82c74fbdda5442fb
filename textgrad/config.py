"""The process-wide default engine for backward passes, as in TextGrad's `set_backward_engine`, and how
every call that takes an engine turns what it was given into one."""

from __future__ import annotations

from .engine import ChatEngine, get_engine
from .engine_lm import EngineLM

Engine = ChatEngine | EngineLM
EngineSpec = Engine | str

_backward_engine: Engine | None = None


def as_engine(engine: EngineSpec) -> Engine:
    """An engine name through get_engine (so it gets our cache, cap and budgets); an engine as it is."""
    if isinstance(engine, str):
        return get_engine(engine)
    if not callable(getattr(engine, "chat", None)):
        raise TypeError(f"{type(engine).__name__} is not an engine: pass an engine name such as 'gpt-4o', "
                        "an engine from tg.get_engine(...), or an instance of a tg.EngineLM subclass")
    return engine


def resolve_engine(engine: EngineSpec | None) -> Engine:
    """The engine a loss, model, optimizer or backward() uses: the one given, else the backward engine."""
    return get_backward_engine() if engine is None else as_engine(engine)


def set_backward_engine(engine: EngineSpec, override: bool = True) -> None:
    global _backward_engine
    if _backward_engine is not None and not override:
        return
    _backward_engine = as_engine(engine)


def get_backward_engine() -> Engine:
    if _backward_engine is None:
        raise ValueError("no engine given and no backward engine set: pass engine=..., "
                         "or call tg.set_backward_engine('gpt-4o') first")
    return _backward_engine
