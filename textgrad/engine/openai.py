"""ChatOpenAI: a chat model behind OpenAI's API or any OpenAI-compatible base URL.

Every backend we route to (embedded llama.cpp, Ollama, vLLM, SGLang, OpenAI) speaks that API, so this
one class serves them all; `get_engine` (textgrad.engine) maps names to it. The engine itself only puts
its parts together, each with one concern and all from textgrad.serving: the transport (connection,
retries, the cap), the response cache, the context window (EngineContext) and the counters (EngineStats).
As in TextGrad, `ChatOpenAI()` is OpenAI's gpt-3.5-turbo-0613 and needs OPENAI_API_KEY;
`ChatOpenAI("llama3", base_url="http://localhost:11434/v1")` is a model of an OpenAI-compatible server.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from ..serving.backends import Backend, Route, route_to
from ..serving.cache import CachedReplies, ResponseCache
from ..serving.context import EngineContext
from ..serving.reply_formats import ReplyFormats
from ..serving.runtime import Runtime, current_runtime
from ..serving.slots import EndpointSlots
from ..serving.stats import EngineStats
from ..serving.tokenizers import TokenCount
from ..serving.transport import ChatReply, OverflowReply, Transport, chat_body
from .base import EngineLM

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "gpt-3.5-turbo-0613"  # TextGrad's ChatOpenAI() default


def _normalise_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # None content happens when callers pass through an empty previous reply; the
    # servers reject null, and the cache key must not depend on None-vs-"".
    return [{"role": m.get("role") or "user", "content": "" if m.get("content") is None else m["content"]}
            for m in messages]


def _rough_tokens(text: str) -> int:
    # Only for the counters, when a server reports no usage.
    return len(text) // 4


class ChatOpenAI(EngineLM):
    """A chat model at an OpenAI-compatible endpoint: temperature 0 by default, retries, the endpoint's
    concurrency cap, the on-disk response cache and the context window of its runtime."""

    # What a request samples with unless it says otherwise; a view from sampled() has its own.
    temperature: float = 0.0
    top_p: float | None = None  # None: not sent, the server's default

    def __init__(self, model_string: str | None = None, system_prompt: str | None = None,
                 is_multimodal: bool = False, base_url: str | None = None, *, api_key: str | None = None,
                 name: str | None = None, route: Route | None = None, runtime: Runtime | None = None,
                 cache_dir: str | None = None, use_cache: bool | None = None,
                 max_concurrency: int | None = None) -> None:
        if is_multimodal:
            raise ValueError("images are not supported here: engines take and return text only")
        self.route = route or route_to(model_string or DEFAULT_MODEL, base_url, api_key)
        self.runtime = runtime or current_runtime()
        settings = self.runtime.settings
        self.name = name or self.route.model or "local"
        self.system_prompt = system_prompt  # used when generate() is given none
        self.stats = EngineStats()
        use_cache = settings.use_cache if use_cache is None else use_cache
        self.cache = ResponseCache(cache_dir or settings.cache_directory()) if use_cache else None
        self._replies = CachedReplies(self.cache, self.stats) if self.cache is not None else None
        self.transport = Transport(self.name, self.route, self.runtime, self.stats,
                                   max_concurrency=max_concurrency or settings.max_concurrency,
                                   request_timeout=settings.request_timeout)
        self.context = EngineContext(self.name, self.route, settings.max_context, self.transport.connection,
                                     http=self.runtime.http, vocabs=self.runtime.vocabs, stats=self.stats)

    def __repr__(self) -> str:
        # Deliberately without the key (and without connecting).
        return f"ChatOpenAI(name={self.name!r}, model={self.route.model!r}, base_url={self.route.base_url!r})"

    def sampled(self, *, temperature: float | None = None, top_p: float | None = None) -> ChatOpenAI:
        """This engine sampling with its own temperature and top_p by default: a view sharing the connection,
        cache, window and counters (one role of a run, e.g. the optimizer at top_p 0.99)."""
        view = copy.copy(self)
        view.temperature = self.temperature if temperature is None else float(temperature)
        view.top_p = self.top_p if top_p is None else float(top_p)
        return view

    # -- where the model is ---------------------------------------------------------------------

    @property
    def model(self) -> str:
        """The model id sent with every request (the embedded server's is known once it runs)."""
        return self.transport.model

    @property
    def model_string(self) -> str:  # TextGrad's name for it
        return self.route.model if self.route.model is not None else self.model

    @property
    def base_url(self) -> str:
        return self.transport.base_url

    @property
    def backend(self) -> Backend:
        return self.route.backend

    @property
    def env_var(self) -> str:
        return self.route.env_var

    @property
    def reply_formats(self) -> ReplyFormats:
        return self.runtime.reply_formats

    @property
    def cache_endpoint(self) -> str:
        return self.transport.endpoint_id()

    def request_slot(self) -> EndpointSlots:
        """The endpoint's concurrency cap, to hold around requests made outside chat()."""
        return self.transport.slots

    def check_available(self) -> None:
        """Fail fast, with one actionable line, if the endpoint cannot serve requests."""
        self.transport.check_available()

    # -- the context window ---------------------------------------------------------------------

    @property
    def context_window(self) -> int:  # type: ignore[override]
        """Tokens a request may use, prompt and reply together (see EngineContext)."""
        return self.context.window

    def count_tokens(self, text: str) -> int:
        """Tokens of text by the model's tokenizer where one is reachable, else a conservative estimate."""
        return self.context.count(text)

    def token_count(self, text: str) -> TokenCount:
        """count_tokens(text) with whether it is exact: the project's one token counter (prompt lengths too).

        Exact from the embedded model's vocabulary, a server's /tokenize, or tiktoken for OpenAI models;
        an estimate (exact=False) where none of them answers."""
        return self.context.token_count(text)

    def estimate_tokens(self, text: str) -> int:
        """A cheap upper bound of count_tokens (no request to the server)."""
        return self.context.estimate(text)

    # -- chatting -------------------------------------------------------------------------------

    def generate(self, prompt: str, system_prompt: str | None = None, *,  # type: ignore[override]
                 temperature: float | None = None, max_tokens: int = 512, top_p: float | None = None) -> str:
        """Answer one user prompt, under system_prompt (or the engine's own, if it has one)."""
        system_prompt = self.system_prompt if system_prompt is None else system_prompt
        messages: list[dict[str, Any]] = []
        if system_prompt is not None:
            messages.append({"role": "system", "content": system_prompt})
        messages.append({"role": "user", "content": prompt})
        return self.chat(messages, temperature=temperature, max_tokens=max_tokens, top_p=top_p)

    __call__ = generate

    def chat(self, messages: list[dict[str, Any]], *, temperature: float | None = None, max_tokens: int = 512,
             response_format: dict[str, Any] | None = None, top_p: float | None = None) -> str:
        """Send a chat and return the reply text ("" when the model says nothing)."""
        return self.chat_reply(messages, temperature=temperature, max_tokens=max_tokens,
                               response_format=response_format, top_p=top_p).text

    def chat_reply(self, messages: list[dict[str, Any]], *, temperature: float | None = None, max_tokens: int = 512,
                   response_format: dict[str, Any] | None = None, top_p: float | None = None) -> ChatReply:
        """chat, with the reply's finish_reason; response_format (textgrad.structured) goes to the server
        as given. StructuredOutputRejected when the server refuses it. temperature and top_p default to the
        engine's own (see sampled)."""
        self.transport.connect()
        messages = _normalise_messages(messages)
        max_tokens = self.context.fit_reply(messages, int(max_tokens))
        body = chat_body(self.model, messages, temperature=self.temperature if temperature is None else temperature,
                         max_tokens=max_tokens, top_p=self.top_p if top_p is None else top_p,
                         response_format=response_format)
        key = None
        if self._replies is not None:
            # Keyed by the body as sent and the server it goes to; looked up before the cap: a hit must never
            # wait behind real requests.
            key = ResponseCache.request_key(body, endpoint=self.cache_endpoint)
            hit = self._replies.lookup(key, "text", str)
            if hit is not None:
                return ChatReply(hit["text"], hit.get("finish_reason"))
        try:
            completion = self.transport.send(body)
        except OverflowReply as exc:
            raise self.context.overflow(messages, max_tokens, exc.body) from None
        reply = completion.reply
        prompt_tokens = completion.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = sum(_rough_tokens(str(m["content"])) for m in messages)
        else:
            self.context.calibrate(messages, prompt_tokens)
        completion_tokens = completion.completion_tokens
        if completion_tokens is None:
            completion_tokens = _rough_tokens(reply.text)
        self.stats.add(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        self.context.answered(prompt_tokens, max_tokens)
        if self._replies is not None and key is not None:
            self._replies.store(key, {"model": self.model, "text": reply.text, "prompt_tokens": prompt_tokens,
                                      "completion_tokens": completion_tokens, "finish_reason": reply.finish_reason})
        return reply

    # -- prompt log-probabilities (UID measures) ------------------------------------------------

    def prompt_logprobs(self, text: str) -> list[tuple[str, float]] | None:
        """(token, log p(token | the tokens before it)) for every token of text after the first, from the
        server; None where the backend returns no prompt log-probabilities. May raise.

        Kept in the response cache like chat replies and sent under the endpoint's cap, but not counted
        as an LLM call of the run."""
        style = self.backend.prompt_logprobs
        if style is None or not text.strip():
            return None
        if style == "echo":
            return self._echo_logprobs(text)
        # llama-cpp-python pairs echoed token i with the log-probabilities computed *after* token i unless
        # the prompt starts with the model's BOS token (which it then strips). So the BOS is put in front
        # explicitly for models that do not add it themselves; that requires knowing which model is served.
        model_path = self.runtime.embedded.served_model_path(self.base_url, self.model)
        bos = self.runtime.vocabs.bos_token(model_path) if model_path else None
        if bos is None:
            return None
        pairs = self._echo_logprobs(("" if bos.added_by_model else bos.text) + text)
        if not text.endswith("".join(token for token, _ in pairs)):
            return None  # the BOS was not recognised as such: the values would be misaligned
        return pairs

    def _echo_logprobs(self, prompt: str) -> list[tuple[str, float]]:
        """(token, log-probability) of every echoed prompt token that has one (not the first)."""
        key = ResponseCache.make_key(self.model, [{"role": "echo", "content": prompt}], {"logprobs": 1},
                                     endpoint=self.cache_endpoint)
        hit = self._replies.lookup(key, "logprobs", list, counted=False) if self._replies is not None else None
        if hit is not None:
            return [(str(token), float(value)) for token, value in hit["logprobs"]]
        pairs = _echoed_prompt_logprobs(self.transport.echo(prompt))
        if self._replies is not None:
            self._replies.store(key, {"model": self.model, "logprobs": pairs})
        return pairs


def _echoed_prompt_logprobs(body: dict[str, Any]) -> list[tuple[str, float]]:
    logprobs = body["choices"][0]["logprobs"]
    # The arrays cover the prompt and then the generated token(s): drop the generated ones.
    generated = int((body.get("usage") or {}).get("completion_tokens") or 0)
    pairs = list(zip(logprobs["tokens"], logprobs["token_logprobs"], strict=True))
    return [(token, float(value)) for token, value in pairs[:len(pairs) - generated] if value is not None]
