"""Token counts of texts for an engine, without starting or asking any server (for utils.estimate).

- `local`: the GGUF model's own vocabulary, loaded in-process with llama_cpp (vocab_only: no weights,
  no server), so counts are exact for the packaged SmolLM2 or LOCAL_MODEL_PATH.
- OpenAI models: tiktoken's encoding when tiktoken is installed and has it (its encodings are
  downloaded at first use, so offline this falls back).
- anything else: textgrad.context.estimate_tokens, an upper estimate for 32k-50k BPE vocabularies.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from textgrad.context import estimate_tokens

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenCounter:
    count: Callable[[str], int]
    source: str  # how the counts are made, printed with the estimate
    exact: bool


def _estimating(why: str) -> TokenCounter:
    return TokenCounter(estimate_tokens, f"an estimate from the text ({why})", exact=False)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@functools.lru_cache(maxsize=4)
def _gguf_counter(model_path: str) -> TokenCounter | None:
    try:
        import llama_cpp

        with _quiet_stderr():  # llama.cpp's C code prints context warnings whatever `verbose` says
            vocab = llama_cpp.Llama(model_path=model_path, vocab_only=True, verbose=False)
    except Exception as exc:  # noqa: BLE001 - a missing or unreadable model only costs exactness
        logger.warning("could not load the vocabulary of %s (%s); estimating token counts", model_path, exc)
        return None
    lock = threading.Lock()  # one llama_cpp vocabulary, used from the caller's threads

    @functools.lru_cache(maxsize=65536)
    def count(text: str) -> int:
        with lock:
            return len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    return TokenCounter(count, f"the {Path(model_path).name} vocabulary (llama.cpp, in-process)", exact=True)


def _tiktoken_counter(model: str) -> TokenCounter | None:
    try:
        import tiktoken

        encoding = tiktoken.encoding_for_model(model)
    except Exception:  # noqa: BLE001 - not installed, unknown model, or offline (encodings are downloaded)
        return None
    return TokenCounter(lambda text: len(encoding.encode(text, disallowed_special=())),
                        f"tiktoken {encoding.name}", exact=True)


def token_counter(engine: str, kind: str, model_path: str | None = None) -> TokenCounter:
    """The best counter reachable without a server for an engine of this kind ("local", "openai", ...)."""
    if kind == "local" and model_path:
        counter = _gguf_counter(model_path)
        if counter is not None:
            return counter
        return _estimating("the GGUF vocabulary could not be loaded")
    if kind == "openai":
        return _tiktoken_counter(engine) or _estimating("tiktoken or its encoding is not available offline")
    return _estimating("this server's tokenizer is only reachable through the server")
