"""Token counts of text: exact from the model's own tokenizer wherever one is reachable, else an estimate.

Exact sources, by backend (see textgrad.serving.backends.Backend.tokenizer): a llama.cpp server's GGUF
vocabulary loaded in-process through llama-cpp-python (a runtime's `Vocabularies`), where the file is on
this machine; a server's tokenize route (llama.cpp's
llama-server, vLLM and SGLang answer /tokenize, llama-cpp-python /extras/tokenize/count); tiktoken for
the OpenAI models it knows. tiktoken downloads its encodings at first use, so offline (or for a model
name it does not know) OpenAI counts are estimated, and say so.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import logging
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from .http import HttpClients, server_root

logger = logging.getLogger(__name__)

COUNT_CACHE_SIZE = 4096
ESTIMATE_CACHE_SIZE = 4096


@dataclass(frozen=True)
class TokenCount:
    """A token count and whether it came from the model's tokenizer (True) or is an estimate (False)."""

    tokens: int
    exact: bool


class Tokenizer(Protocol):
    def count(self, text: str) -> int | None:
        """Tokens of text, or None when this tokenizer cannot count it now."""


# ---------------------------------------------------------------- counting without a tokenizer

_PIECES = re.compile(r"\d|[A-Za-z]+|[^\x00-\x7f]|\s+|.", re.DOTALL)
# ASCII text by kind of character: letter "a", digit "0", space " ", other whitespace "n", anything else ".".
_KINDS = str.maketrans({chr(c): "a" if chr(c).isalpha() else "0" if chr(c).isdigit() else " " if c == 32 else
                        "n" if chr(c).isspace() else "." for c in range(128)})
_OTHER_WHITESPACE_RUNS = re.compile("[ n]{2,}|n")  # every run of whitespace but a single space


@functools.lru_cache(maxsize=ESTIMATE_CACHE_SIZE)
def estimate_tokens(text: str) -> int:
    """An upper estimate of the token count of text for BPE vocabularies of 32k-50k entries.

    Measured against SmolLM2's tokenizer on every BBH and GSM8K text in ../shared/data it is never
    below the true count and about 1.5 times it on average: digits and punctuation are one token
    each, rare words split into 3-letter pieces, non-ASCII characters cost a token per UTF-8 byte.
    Never below one token per 4 characters, the rate llama.cpp-style servers are often assumed to use.

    Every request is measured on its way out, some texts many times (the prompt of a whole evaluation):
    the counts are remembered, and ASCII text (nearly all of it) is counted by C-level string passes.
    """
    count = _ascii_pieces(text) if text.isascii() else _pieces(text)
    return max(math.ceil(count * 1.1), math.ceil(len(text) / 4))


def _pieces(text: str) -> int:
    """The estimate before scaling, piece by piece: digits, letter runs, non-ASCII characters, whitespace
    runs, any other character."""
    count = 0
    for match in _PIECES.finditer(text):
        piece = match.group()
        first = piece[0]
        if first.isascii() and first.isdigit():
            count += 1
        elif first.isascii() and first.isalpha():
            count += 1 if len(piece) <= 3 else math.ceil(len(piece) / 3)
        elif not first.isascii():
            count += len(piece.encode("utf-8"))
        elif first.isspace():
            # A single space merges into the next word, except before digits (tokenised one by one).
            follows_digit = text[match.end():match.end() + 1].isdigit()
            count += (1 if follows_digit else 0) if piece == " " else 1 + len(piece) // 8
        else:
            count += 1
    return count


def _ascii_pieces(text: str) -> int:
    """_pieces of ASCII text, the same number in about a third of the time: counted on the text's kinds
    of character (_KINDS) by passes of str methods instead of a Python step per piece."""
    kinds = text.translate(_KINDS)
    chunked = kinds.replace("aaa", "b")  # a word of n letters: n // 3 "b", then n % 3 "a" left over
    words = chunked.count("b") + chunked.count("a") - chunked.count("aa")  # ceil(n / 3) per word
    lone_spaces_before_digits = kinds.count(" 0") - kinds.count("  0") - kinds.count("n 0")
    other_whitespace = sum(1 + len(run) // 8 for run in _OTHER_WHITESPACE_RUNS.findall(kinds))
    return kinds.count("0") + kinds.count(".") + words + lone_spaces_before_digits + other_whitespace


# ---------------------------------------------------------------- a server's tokenize route


class ServerTokenizer:
    """Token counts from the server's own tokenizer endpoint, found by trying each of its routes once.

    llama.cpp's llama-server, vLLM and SGLang answer POST /tokenize or /v1/tokenize (reading "content"
    or "prompt": both are sent); llama-cpp-python answers POST /extras/tokenize/count. Counts are
    cached by text, since the same system prompt is measured over and over.
    """

    def __init__(self, http: HttpClients, base_url: str, model: str, api_key: str, routes: tuple[str, ...]) -> None:
        self._http = http
        self.root = server_root(base_url)
        self.model = model
        self.routes = routes
        self._api_key = api_key
        self._route: str | None = None
        self._probed = False
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def _ask(self, route: str, text: str) -> int:
        if route.endswith("/tokenize"):
            reply = self._http.post_json(self.root + route, self._api_key,
                                         {"model": self.model, "content": text, "prompt": text, "add_special": False})
        else:
            reply = self._http.post_json(self.root + route, self._api_key, {"model": self.model, "input": text})
        if isinstance(reply.get("count"), int):
            return int(reply["count"])
        tokens = reply.get("tokens")
        if isinstance(tokens, list):
            return len(tokens)
        raise ValueError("no token count in the reply")

    def count(self, text: str) -> int | None:
        with self._lock:
            if text in self._cache:
                self._cache.move_to_end(text)
                return self._cache[text]
        routes = [self._route] if self._probed else list(self.routes)
        for route in routes:
            if route is None:
                return None
            try:
                n = self._ask(route, text)
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                if not _route_absent(exc):
                    return None  # busy or unreachable now: this one count is estimated, the route kept
                continue
            except (httpx.InvalidURL, ValueError, AttributeError, TypeError):
                continue
            with self._lock:
                self._route, self._probed = route, True
                self._cache[text] = n
                if len(self._cache) > COUNT_CACHE_SIZE:
                    self._cache.popitem(last=False)
            return n
        if not self._probed:
            logger.info("%s offers no tokenizer endpoint; token counts are estimated", self.root)
            self._probed = True
        return None


def _route_absent(exc: httpx.TransportError | httpx.HTTPStatusError) -> bool:
    """The server has no such route (as opposed to being slow, overloaded or down for a moment)."""
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (400, 404, 405, 422, 501)


# ---------------------------------------------------------------- the embedded model's vocabulary


class Vocabularies:
    """GGUF vocabularies loaded in-process (llama_cpp.Llama with vocab_only: no weights), one per model file:
    engines come and go (one per cache folder), the vocabulary stays. Closed at close() or at exit."""

    def __init__(self) -> None:
        self._vocabs: dict[str, Any] = {}
        self._bos: dict[str, BosToken | None] = {}
        self._lock = threading.Lock()

    def load(self, model_path: str) -> Any | None:
        """The vocabulary of the GGUF file, or None if it cannot be read."""
        with self._lock:
            if model_path not in self._vocabs:
                self._vocabs[model_path] = _open_vocab(model_path)
                if len(self._vocabs) == 1:
                    # Before the interpreter tears llama_cpp down: Llama.__del__ at that point fails loudly.
                    atexit.register(self.close)
            return self._vocabs[model_path]

    def tokenizer(self, model_path: str) -> VocabTokenizer | None:
        vocab = self.load(model_path)
        return VocabTokenizer(vocab) if vocab is not None else None

    def bos_token(self, model_path: str) -> BosToken | None:
        """The beginning-of-sequence token of a GGUF model, or None if it has none or cannot be read."""
        with self._lock:
            if model_path in self._bos:
                return self._bos[model_path]
        bos = _bos_token(self.load(model_path))
        with self._lock:
            self._bos[model_path] = bos
        return bos

    def close(self) -> None:
        with self._lock:
            vocabs = [v for v in self._vocabs.values() if v is not None]
            self._vocabs.clear()
            self._bos.clear()
        for vocab in vocabs:
            vocab.close()


def _open_vocab(model_path: str) -> Any | None:
    try:
        import llama_cpp

        # Even with verbose=False, llama-cpp-python prints a warning about the (unused) context of a
        # vocabulary-only model to sys.stderr; the model loader itself is silenced by verbose=False.
        with contextlib.redirect_stderr(io.StringIO()):
            return llama_cpp.Llama(model_path, vocab_only=True, verbose=False, n_ctx=8, n_batch=8)
    except (ImportError, ValueError, OSError, RuntimeError) as exc:
        logger.info("cannot load the tokenizer of %s (%s); token counts are estimated", model_path, exc)
        return None


class VocabTokenizer:
    """The embedded server's tokenizer, loaded in-process from the same GGUF file (vocabulary only).

    Exact and local: asking the embedded llama-cpp-python server would queue each count behind the
    generation in progress, since that server handles one request at a time.
    """

    def __init__(self, vocab: Any) -> None:
        self._vocab = vocab
        self._lock = threading.Lock()

    def count(self, text: str) -> int | None:
        # As the server reads a prompt: special tokens parsed, no BOS added in front.
        try:
            with self._lock:
                return len(self._vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True))
        except RuntimeError:  # llama.cpp could not tokenize it
            return None


@dataclass(frozen=True)
class BosToken:
    text: str             # e.g. "<|im_start|>" for SmolLM2
    added_by_model: bool  # True: the tokenizer already puts it in front of every prompt


def _bos_token(vocab: Any | None) -> BosToken | None:
    if vocab is None:
        return None
    bos = vocab.token_bos()
    if bos < 0:
        return None
    text = vocab.detokenize([bos], special=True).decode("utf-8", errors="replace")
    # Tokenizing with add_bos=True adds it only where the vocabulary asks for it, as the server does.
    added = vocab.tokenize(b"x", add_bos=True, special=False)[:1] == [bos]
    return BosToken(text=text, added_by_model=added) if text else None


# ---------------------------------------------------------------- OpenAI models


class TiktokenTokenizer:
    """OpenAI's tokenizer for the model, loaded on first use; counts nothing (None) when tiktoken does not
    know the model or cannot fetch its encoding (it downloads encodings at first use, so offline it fails)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._encoding: Any = None
        self._failed = False
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._encoding is None and not self._failed:
                try:
                    import tiktoken

                    self._encoding = tiktoken.encoding_for_model(self.model)
                except (ImportError, KeyError, OSError, ValueError) as exc:
                    self._failed = True
                    logger.warning("no tiktoken encoding for %s (%s): its token counts are estimated",
                                   self.model, str(exc).splitlines()[0][:160])
            return self._encoding

    def count(self, text: str) -> int | None:
        encoding = self._load()
        return len(encoding.encode(text, disallowed_special=())) if encoding is not None else None
