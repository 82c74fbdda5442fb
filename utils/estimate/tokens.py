"""Token counts of texts for an engine without starting or asking any server (for utils.estimate.requests).

The counters are textgrad.serving.tokenizers' (the project's one token counter); this only picks the one that
works offline and before any server runs, and says how its counts are made:
- `local`: the GGUF model's own vocabulary, loaded in-process (no weights, no server): exact;
- OpenAI models: tiktoken, where it has the encoding (downloaded at first use, so offline it falls back);
- anything else: the upper estimate, since that server's tokenizer is only reachable through the server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from textgrad.serving.runtime import current_runtime
from textgrad.serving.tokenizers import TiktokenTokenizer, Tokenizer, estimate_tokens


@dataclass(frozen=True)
class TokenCounter:
    count: Callable[[str], int]
    source: str  # how the counts are made, printed with the estimate
    exact: bool


def _estimating(why: str) -> TokenCounter:
    return TokenCounter(estimate_tokens, f"an estimate from the text ({why})", exact=False)


def _exact(tokenizer: Tokenizer, source: str) -> TokenCounter:
    def count(text: str) -> int:
        tokens = tokenizer.count(text)
        return estimate_tokens(text) if tokens is None else tokens

    return TokenCounter(count, source, exact=True)


def token_counter(engine: str, kind: str, model_path: str | None = None) -> TokenCounter:
    """The best counter reachable without a server for an engine of this kind ("local", "openai", ...)."""
    if kind == "local" and model_path:
        vocab = current_runtime().vocabs.tokenizer(model_path)
        if vocab is None:
            return _estimating("the GGUF vocabulary could not be loaded")
        return _exact(vocab, f"the {Path(model_path).name} vocabulary (llama.cpp, in-process)")
    if kind == "openai":
        tiktoken = TiktokenTokenizer(engine)
        if tiktoken.count("probe") is None:
            return _estimating("tiktoken or its encoding is not available offline")
        return _exact(tiktoken, f"tiktoken for {engine}")
    return _estimating("this server's tokenizer is only reachable through the server")
