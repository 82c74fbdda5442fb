"""Engines: `get_engine(name)` is the one place engine names become engines.

Names, as TextGrad spells them and as we add them: `gpt-*` and any other OpenAI model (at
OPENAI_BASE_URL if set), `ollama-<model>`, `vllm-<model>`, `experimental:<name>` (TextGrad's LiteLLM
spelling: the prefix is dropped and the rest routed like any name), and ours `sglang-<model>` and
`local` (the embedded llama.cpp pool, or LOCAL_BASE_URL). Every one of them is a ChatOpenAI at the
backend's URL (textgrad.serving.backends knows which), so every engine has `model_string` and `base_url`.
"""

from __future__ import annotations

from pathlib import Path

from ..serving.backends import canonical_engine_name, route
from ..serving.runtime import Runtime, current_runtime
from .base import CachedEngine, EngineLM
from .openai import ChatOpenAI

ChatEngine = ChatOpenAI  # the name this package used before it was laid out as TextGrad's

__all__ = ["CachedEngine", "ChatEngine", "ChatOpenAI", "EngineLM", "get_engine"]


def get_engine(engine_name: str, *, cache_dir: str | None = None, use_cache: bool | None = None,
               max_concurrency: int | None = None, runtime: Runtime | None = None) -> ChatOpenAI:
    """The engine for `engine_name` in runtime (default: the current one), created once per name, cache
    directory, use_cache and --max_context. Routing and key problems raise EngineError here, before any
    request is made."""
    runtime = runtime or current_runtime()
    name = canonical_engine_name(engine_name)
    settings = runtime.settings
    use_cache = settings.use_cache if use_cache is None else use_cache
    directory = str(Path(cache_dir).expanduser().resolve()) if cache_dir else settings.cache_directory()

    def create() -> ChatOpenAI:
        where = route(name)
        if where.embedded:
            # Installed now because get_engine usually runs in the main thread, while
            # the server itself may first be needed from a worker thread.
            runtime.embedded.install_signal_handlers()
        return ChatOpenAI(name=name, route=where, runtime=runtime, cache_dir=directory, use_cache=use_cache,
                          max_concurrency=max_concurrency)

    return runtime.engine((name, directory, bool(use_cache), settings.max_context), create)
