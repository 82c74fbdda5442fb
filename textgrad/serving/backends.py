"""Where an engine name leads and what the backend there can do: the one place that knows backends.

Engine names: `local` (the embedded llama.cpp server, or a running one at LOCAL_BASE_URL),
`ollama-<model>`, `vllm-<model>`, `sglang-<model>`, and anything else an OpenAI model (at
OPENAI_BASE_URL if set). Every backend speaks the OpenAI chat API; a `Backend` records what else it
offers, so callers ask "does it return prompt log-probabilities?" instead of testing engine names.

utils.config checks names with `engine_name_problem` before any request; `route` resolves a name with
the environment into URL, model and key for the engine (textgrad.engine.get_engine), `route_to` a URL
given in code (textgrad.engine.openai.ChatOpenAI's base_url). To add a backend: an entry in BACKENDS.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import EngineError, MissingKeyError
from .http import clean_url

OPENAI_DEFAULT_URL = "https://api.openai.com/v1"

BackendKind = Literal["local", "ollama", "vllm", "sglang", "openai"]
# How a backend takes a one-field JSON schema for a reply: llama-cpp-python as
# {"type": "json_object", "schema": ...}, the others as OpenAI's {"type": "json_schema", ...}.
StructuredOutput = Literal["json_object_schema", "json_schema"]
# Prompt log-probabilities from POST /completions with echo: llama-cpp-python pairs them with the right
# tokens only when the prompt starts with the model's BOS token ("llama_cpp_echo"); vLLM as it is ("echo").
PromptLogprobs = Literal["llama_cpp_echo", "echo"]
# Where a server states its context window (see textgrad.serving.window.discover_window).
WindowProbe = Literal["ollama_show", "model_listing", "props"]
# Where exact token counts come from: the server's tokenize route, tiktoken for OpenAI models, or the GGUF
# vocabulary in-process for llama.cpp servers whose model file is on this machine (the embedded one, or a
# LOCAL_BASE_URL server reporting the packaged model). In-process counts do not queue behind generations:
# llama-cpp-python's server answers a tokenize request only between completions, so under load a
# tokenize route times out and the count would silently become an estimate.
TokenizerSource = Literal["server", "tiktoken", "vocab"]


@dataclass(frozen=True)
class Backend:
    """One kind of OpenAI-compatible server and what it can do beyond chat completions."""

    kind: BackendKind
    prefix: str                   # of engine names: "ollama-"; "local" is a whole name; "" for OpenAI
    url_env: str                  # the variable that sets the URL
    default_url: str | None       # None: start the embedded llama.cpp server
    key_env: str                  # the variable that holds the key
    placeholder_key: str = field(repr=False)  # self-hosted servers accept any key; the SDK needs one
    structured_output: StructuredOutput | None
    prompt_logprobs: PromptLogprobs | None
    window_probes: tuple[WindowProbe, ...]
    tokenizer: TokenizerSource | None  # None: no tokenizer to ask, counts are estimated
    # The server's tokenize routes below its root, tried in order until one answers.
    tokenize_routes: tuple[str, ...] = ()

    def response_format(self, name: str, schema: dict[str, Any]) -> dict[str, Any] | None:
        """The request's response_format asking for a JSON object of `schema`, as this backend spells it;
        None where it has no structured output."""
        if self.structured_output == "json_object_schema":
            return {"type": "json_object", "schema": schema}
        if self.structured_output == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
        return None


BACKENDS: dict[BackendKind, Backend] = {
    # LOCAL_BASE_URL may be llama.cpp's llama-server (/tokenize) or llama-cpp-python (/extras/tokenize/count,
    # scripts/llamacpp_serve.sh), which also runs the embedded server.
    "local": Backend(kind="local", prefix="local", url_env="LOCAL_BASE_URL", default_url=None,
                     key_env="LOCAL_API_KEY", placeholder_key="local", structured_output="json_object_schema",
                     prompt_logprobs="llama_cpp_echo", window_probes=("model_listing", "props"),
                     tokenizer="vocab", tokenize_routes=("/tokenize", "/extras/tokenize/count")),
    "ollama": Backend(kind="ollama", prefix="ollama-", url_env="OLLAMA_BASE_URL",
                      default_url="http://localhost:11434/v1", key_env="OLLAMA_API_KEY", placeholder_key="ollama",
                      structured_output="json_schema", prompt_logprobs=None,
                      window_probes=("ollama_show", "model_listing", "props"), tokenizer=None),
    "vllm": Backend(kind="vllm", prefix="vllm-", url_env="VLLM_BASE_URL", default_url="http://localhost:8000/v1",
                    key_env="VLLM_API_KEY", placeholder_key="EMPTY", structured_output="json_schema",
                    prompt_logprobs="echo", window_probes=("model_listing", "props"), tokenizer="server",
                    tokenize_routes=("/tokenize",)),
    "sglang": Backend(kind="sglang", prefix="sglang-", url_env="SGLANG_BASE_URL",
                      default_url="http://localhost:30000/v1", key_env="SGLANG_API_KEY", placeholder_key="EMPTY",
                      structured_output="json_schema", prompt_logprobs=None,
                      window_probes=("model_listing", "props"), tokenizer="server",
                      tokenize_routes=("/v1/tokenize", "/tokenize")),
    "openai": Backend(kind="openai", prefix="", url_env="OPENAI_BASE_URL", default_url=OPENAI_DEFAULT_URL,
                      key_env="OPENAI_API_KEY", placeholder_key="", structured_output="json_schema",
                      prompt_logprobs=None, window_probes=("model_listing",), tokenizer="tiktoken"),
}


def backends_with_prompt_logprobs() -> list[Backend]:
    """The backends whose servers return a prompt's log-probabilities (for UID measures)."""
    return [b for b in BACKENDS.values() if b.prompt_logprobs is not None]


# ---------------------------------------------------------------- the engine-name grammar

ENGINE_PREFIXES = tuple(b.prefix for b in BACKENDS.values() if b.prefix)  # local, ollama-, vllm-, sglang-
# Model ids that OpenAI itself serves; any other name needs OPENAI_BASE_URL (another compatible server).
OPENAI_MODEL_PATTERN = re.compile(r"(gpt|chatgpt|o\d|ft:|text-|davinci|babbage|codex|computer-use|omni)", re.I)
ENGINE_CHOICES = "use local, ollama-<model>, vllm-<model>, sglang-<model> or an OpenAI model such as gpt-4o"


# TextGrad sends `experimental:<model>` to its LiteLLM-based engines. We route every name through one
# table, so the prefix selects nothing here; it must only never reach a server as part of the model id.
EXPERIMENTAL_PREFIX = "experimental:"


def canonical_engine_name(name: str) -> str:
    """`name` without TextGrad's `experimental:` prefix; any other name unchanged."""
    if isinstance(name, str) and name.startswith(EXPERIMENTAL_PREFIX):
        return name[len(EXPERIMENTAL_PREFIX):].strip()
    return name


def split_engine_name(name: str) -> tuple[Backend, str | None]:
    """(backend, what follows the prefix) of a name: None for `local` (the server names its model), ""
    when a prefixed name gives no model. Everything without a known prefix is an OpenAI model."""
    if name == "local":
        return BACKENDS["local"], None
    for backend in BACKENDS.values():
        if backend.prefix.endswith("-") and name.startswith(backend.prefix):
            return backend, name[len(backend.prefix):]
    return BACKENDS["openai"], name


def engine_name_problem(name: str) -> str | None:
    """Why name is not an engine name, worded to follow "--flag 'name' ", or None when it is one.

    Decided locally, without a request: a typo must not wait for a network timeout."""
    name = canonical_engine_name(name)
    backend, model = split_engine_name(name)
    if backend.kind != "openai" and model == "":
        return f"names no model: write it as {backend.prefix}<model>"
    if not name.strip() or any(c.isspace() for c in name):
        return f"is not an engine name: {ENGINE_CHOICES}"
    if backend.kind != "openai":
        return None
    head = name.split("-", 1)[0].lower()
    near = difflib.get_close_matches(head, [p.rstrip("-") for p in ENGINE_PREFIXES], n=1, cutoff=0.6)
    if "-" in name and near:
        return f"has an unknown engine prefix {head + '-'!r}: {ENGINE_CHOICES} (did you mean {near[0]}?)"
    if not os.environ.get("OPENAI_BASE_URL") and not OPENAI_MODEL_PATTERN.match(name):
        return (f"is not a known engine: {ENGINE_CHOICES}, or set OPENAI_BASE_URL to serve other names from an "
                "OpenAI-compatible server")
    return None


# ---------------------------------------------------------------- routes


@dataclass(frozen=True)
class Route:
    """An engine name resolved with the environment: backend, model, URL and key."""

    backend: Backend
    model: str | None     # None: ask the server's /models listing
    base_url: str | None  # None: start the embedded llama.cpp server
    api_key: str = field(repr=False, default="")
    pool_urls: tuple[str, ...] = ()  # every server behind base_url when it names several (LOCAL_BASE_URL)

    @property
    def kind(self) -> BackendKind:
        return self.backend.kind

    @property
    def env_var(self) -> str:
        return self.backend.url_env

    @property
    def key_env(self) -> str:
        return self.backend.key_env

    @property
    def embedded(self) -> bool:
        """The embedded llama.cpp server, started by this process (no LOCAL_BASE_URL)."""
        return self.base_url is None


def route(name: str) -> Route:
    """Resolve name with the environment; EngineError (one line, with the fix) for what cannot work."""
    if not name or not name.strip():
        raise EngineError("empty engine name: use `local`, `ollama-<model>`, `vllm-<model>`, "
                          "`sglang-<model>` or an OpenAI model such as `gpt-4o`")
    backend, model = split_engine_name(name)
    model = model.strip() if model is not None else None
    if backend.kind != "openai" and model == "":
        raise EngineError(f"engine `{name}` names no model: write it as `{backend.prefix}<model>`, "
                          f"e.g. `{backend.prefix}llama3.1`")
    url = os.environ.get(backend.url_env) or backend.default_url
    key = _key(backend, url)
    if not key:
        raise MissingKeyError(f"engine {name!r} {missing_key_problem(name)}")
    if not url:
        return Route(backend, model, None, key)
    # LOCAL_BASE_URL may name several identical servers, comma-separated (scripts/llamacpp_serve.sh
    # LLAMACPP_SERVERS=N): the first stands for the pool, requests are spread over all (serving.server_pool).
    urls = tuple(clean_url(u) for u in url.split(",") if u.strip()) if backend.kind == "local" else (clean_url(url),)
    if not urls:
        raise EngineError(f"{backend.url_env}={url!r} names no server: give one URL, or several separated by commas")
    return Route(backend, model, urls[0], key, pool_urls=urls)


def _key(backend: Backend, url: str | None) -> str:
    """The key an engine's requests carry: its variable's, else the backend's placeholder; "none" for a server
    of one's own at the URL variable (it may be keyless; the SDK needs a key all the same); "" when OpenAI
    itself is asked and no key is set."""
    key = os.environ.get(backend.key_env) or backend.placeholder_key
    if not key and url and clean_url(url) != OPENAI_DEFAULT_URL:
        key = "none"
    return key


def missing_key_problem(name: str) -> str | None:
    """What the engine name lacks to have a key (worded to follow "--flag 'name' "), or None. Decided from
    the environment alone, so --estimate, which calls nothing, never asks."""
    backend, _ = split_engine_name(canonical_engine_name(name))
    url = os.environ.get(backend.url_env) or backend.default_url
    if _key(backend, url):
        return None
    return (f"is served by {url} and needs {backend.key_env}, which is not set: export {backend.key_env}=<your key>, "
            f"or set {backend.url_env} to an OpenAI-compatible server of your own (it may be keyless)")


def backend_at(base_url: str) -> Backend:
    """The backend whose URL (its variable's value, else its default) is base_url; OpenAI's for any other."""
    for backend in BACKENDS.values():
        configured = os.environ.get(backend.url_env) or backend.default_url
        if configured and backend.kind != "openai" and clean_url(base_url) in map(clean_url, configured.split(",")):
            return backend
    return BACKENDS["openai"]


def route_to(model: str, base_url: str | None, api_key: str | None = None) -> Route:
    """A route to `model` at a URL given in code (None: OpenAI, or OPENAI_BASE_URL), with its key or the
    backend's variable or placeholder. MissingKeyError when OpenAI itself is asked without a key."""
    if base_url is None:
        backend = BACKENDS["openai"]
        base_url = os.environ.get(backend.url_env) or OPENAI_DEFAULT_URL
    else:
        backend = backend_at(base_url)
    key = api_key or os.environ.get(backend.key_env) or backend.placeholder_key
    if not key and clean_url(base_url) == OPENAI_DEFAULT_URL:
        raise MissingKeyError(f"{backend.key_env} is not set: export it, or pass base_url= of an "
                              "OpenAI-compatible server")
    return Route(backend, model, clean_url(base_url), key or "none", pool_urls=(clean_url(base_url),))
