"""The process-wide default engine for backward passes, as in TextGrad's `set_backward_engine`."""

from __future__ import annotations

from .engine import ChatEngine, get_engine

_backward_engine: ChatEngine | None = None


def set_backward_engine(engine: ChatEngine | str, override: bool = True) -> None:
    global _backward_engine
    if _backward_engine is not None and not override:
        return
    _backward_engine = get_engine(engine) if isinstance(engine, str) else engine


def get_backward_engine() -> ChatEngine:
    if _backward_engine is None:
        raise ValueError("no backward engine: pass one to backward() or call tg.set_backward_engine(...)")
    return _backward_engine
