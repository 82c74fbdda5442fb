"""The base classes of an engine, as TextGrad users write one: `EngineLM` and `CachedEngine`.

Subclass EngineLM and implement `generate(prompt, system_prompt=None, **kwargs)`; the instance is then
accepted wherever an engine is (BlackboxLLM, TextLoss, TGD, backward(), set_backward_engine).
Our own requests reach it through `chat()`, which hands the system and user text to `generate`,
and counts the call in `stats` like our engines do (tokens estimated, as the engine reports none).

An engine that knows its context window sets `context_window` (prompt and reply tokens together)
and may define `count_tokens(text)`: then every request is fitted to that window as for our own
engines (textgrad.serving.budget). Without a window, requests are sent as written.

CachedEngine gives a custom engine a prompt -> reply store on disk (`_check_cache`, `_save_cache`),
kept in our response cache's format: one JSON file per entry, safe to share between processes.
"""

from __future__ import annotations

import hashlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from ..serving.cache import ResponseCache
from ..serving.stats import EngineStats
from ..serving.tokenizers import estimate_tokens


class EngineLM(ABC):
    model_string: str = "custom-engine"
    context_window: int | None = None  # None: unknown, requests go as written

    @abstractmethod
    def generate(self, prompt: str, system_prompt: str | None = None, **kwargs: Any) -> str:
        """The model's reply to `prompt`, under `system_prompt` when one is given."""

    def __call__(self, prompt: str, system_prompt: str | None = None, **kwargs: Any) -> str:
        return self.generate(prompt, system_prompt=system_prompt, **kwargs)

    # Created on first use: TextGrad-style subclasses rarely call super().__init__().
    @property
    def stats(self) -> EngineStats:
        return self.__dict__.setdefault("_engine_stats", EngineStats())

    @stats.setter
    def stats(self, value: EngineStats) -> None:
        self.__dict__["_engine_stats"] = value

    def chat(self, messages: list[dict[str, Any]], *, max_tokens: int = 512) -> str:
        """A chat request as generate() takes it: the system message apart, the rest as the prompt."""
        system = next((str(m["content"]) for m in messages if m.get("role") == "system"), None)
        prompt = "\n\n".join(str(m["content"]) for m in messages if m.get("role") != "system")
        # max_tokens only where generate() can take it: a generate(prompt, system_prompt) is valid too.
        options = {"max_tokens": max_tokens} if _takes_keyword(self.generate, "max_tokens") else {}
        reply = self.generate(prompt, system_prompt=system, **options)
        text = "" if reply is None else str(reply)
        self.stats.add(calls=1, prompt_tokens=estimate_tokens(prompt) + estimate_tokens(system or ""),
                       completion_tokens=estimate_tokens(text))
        return text


def _takes_keyword(function: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # not introspectable: pass only what the contract requires
        return False
    return any(p.kind is p.VAR_KEYWORD or (p.name == name and p.kind is not p.POSITIONAL_ONLY) for p in parameters)


class CachedEngine:
    """A mixin for custom engines: replies stored on disk under cache_path, keyed by the prompt text
    (put the system prompt into it when it matters, as TextGrad's engines do)."""

    def __init__(self, cache_path: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cache_path = str(cache_path)
        self.cache = ResponseCache(self.cache_path)

    @staticmethod
    def _hash_prompt(prompt: str) -> str:
        return hashlib.sha256(prompt.encode("utf-8")).hexdigest()

    def _check_cache(self, prompt: str) -> str | None:
        entry = self.cache.get(self._hash_prompt(prompt))
        return entry["reply"] if entry is not None and isinstance(entry.get("reply"), str) else None

    def _save_cache(self, prompt: str, response: str) -> None:
        self.cache.put(self._hash_prompt(prompt), {"prompt": prompt, "reply": response})
