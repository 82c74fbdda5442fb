"""The HTTP side of a runtime: one pooled client per server, and the JSON requests made through it.

Every HTTP request of the project goes through `HttpClients.client`, so connections are reused and
loopback servers never see a proxy named in the environment.

A request's timeout is a deadline for the whole exchange, not a limit between two reads: httpx's own
timeouts restart with every byte, so a server that sends one byte a second would hold a call forever.
Each socket read and write of our clients is given what is left of the request's deadline (the network
backend below); a request sent through an HTTP proxy from the environment has the deadline checked
between the chunks of its reply instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

PROBE_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 5.0
# A chat reply is a few kilobytes; a body past this is no reply of ours (a proxy's download, a runaway
# generation): reading stops there.
MAX_REPLY_BYTES = 16 * 1024 * 1024

# The monotonic time the request under way in this thread must be done by (None: no deadline).
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("fedtextgrad_http_deadline",
                                                                          default=None)


class InvalidReply(ValueError):
    """A reply whose body is not what the API promises: not UTF-8, not JSON, too large, a lone surrogate."""


@dataclass(frozen=True)
class HttpReply:
    """A complete reply: its status, headers and body: parsed JSON, or an error status's text when that is
    not JSON (a successful reply that is not JSON raises InvalidReply instead)."""

    status: int
    headers: dict[str, str]
    body: Any


def clean_url(url: str) -> str:
    return url.strip().rstrip("/")


def server_root(base_url: str) -> str:
    """http://host:port/v1 -> http://host:port: llama.cpp, vLLM and Ollama serve their extras there."""
    return re.sub(r"/v1/?$", "", base_url.rstrip("/"))


def is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[float]:
    """Every socket operation of our clients inside the block must end within `seconds` from now; yields
    the monotonic time of the deadline."""
    at = time.monotonic() + seconds
    token = _deadline.set(at)
    try:
        yield at
    finally:
        _deadline.reset(token)


def parse_json_body(raw: bytes) -> Any:
    """The body as JSON; InvalidReply naming what is wrong with it. A lone surrogate (JSON "\\ud800")
    decodes but can be neither written to a file nor sent on, so it is refused here too."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidReply(f"the reply is not UTF-8 text (byte {exc.start} of {len(raw)})") from None
    try:
        body = json.loads(text)
    except ValueError:
        start = " ".join(text[:60].split())
        raise InvalidReply(f"the reply is not JSON (it starts {start!r})") from None
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidReply("the reply holds a lone UTF-16 surrogate, which is no character") from None
    return body


def _timeout_left(timeout: float | None) -> float | None:
    """timeout, or less if the request's deadline comes first; httpcore's ReadTimeout once it has passed."""
    at = _deadline.get()
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        import httpcore

        raise httpcore.ReadTimeout("the request's deadline passed")
    return left if timeout is None else min(timeout, left)


def _deadline_transport(trust_env: bool, limits: httpx.Limits, plain: bool) -> httpx.HTTPTransport:
    """httpx's transport over a connection pool whose sockets honour the request's deadline. plain: for a
    plain-HTTP loopback server, which loads no CA bundle (tens of milliseconds of a run's start) until an
    https request (a redirect) needs one."""
    import httpcore
    import httpx

    class Stream(httpcore.NetworkStream):
        def __init__(self, inner: httpcore.NetworkStream) -> None:
            self.inner = inner

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            return self.inner.read(max_bytes, _timeout_left(timeout))

        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            self.inner.write(buffer, _timeout_left(timeout))

        def close(self) -> None:
            self.inner.close()

        def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                      timeout: float | None = None) -> httpcore.NetworkStream:
            return Stream(self.inner.start_tls(ssl_context, server_hostname, _timeout_left(timeout)))

        def get_extra_info(self, info: str) -> Any:
            return self.inner.get_extra_info(info)

    class Backend(httpcore.SyncBackend):
        def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                        socket_options: Any = None) -> httpcore.NetworkStream:
            return Stream(super().connect_tcp(host, port, _timeout_left(timeout), local_address, socket_options))

    # One TLS context (its CA bundle loaded once), for the transport and its pool; none for plain loopback:
    # httpcore makes a verifying one itself when it has none and meets https.
    ssl_context = None if plain else httpx.create_ssl_context(trust_env=trust_env)
    transport = httpx.HTTPTransport(verify=False if ssl_context is None else ssl_context, trust_env=trust_env,
                                    limits=limits)
    # The pool httpx would build, with our backend: the one thing its constructor does not let us choose.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=ssl_context, max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
        network_backend=Backend())
    return transport


class HttpClients:
    """One httpx client per server (scheme, host and port), created on first use and closed with close()."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, str, int | None], httpx.Client] = {}
        self._lock = threading.Lock()

    def client(self, url: str) -> httpx.Client:
        """The pooled client for the server of url. Requests pass their own timeouts."""
        import httpx  # here, not at the top: utils.config reads the engine-name grammar and must load fast

        parts = urllib.parse.urlsplit(url)
        origin = (parts.scheme, parts.hostname or "", parts.port)
        with self._lock:
            client = self._clients.get(origin)
            if client is None:
                # Generous pool limits (the openai SDK's), redirects followed.
                trust_env = not is_loopback(url)  # loopback never goes through a proxy from the environment
                limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
                client = self._clients[origin] = httpx.Client(
                    trust_env=trust_env, follow_redirects=True, limits=limits,
                    transport=_deadline_transport(trust_env, limits, plain=not trust_env and parts.scheme == "http"))
            return client

    def request(self, method: str, url: str, api_key: str, payload: dict[str, Any] | None = None, *,
                timeout: float) -> HttpReply:
        """One request, done within `timeout` seconds in all (httpx.TimeoutException past that), its reply
        read whole. A successful reply's body is parsed JSON (InvalidReply when it is not); an error's is
        JSON or, failing that, its text. Raises httpx.HTTPError when no reply came."""
        import httpx

        with deadline(timeout) as at:
            limits = httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT_S, timeout))
            with self.client(url).stream(method, url, headers=_headers(api_key), json=payload,
                                         timeout=limits) as response:
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > MAX_REPLY_BYTES:
                        raise InvalidReply(f"the reply is larger than {MAX_REPLY_BYTES // 2**20} MB")
                    if time.monotonic() > at:  # only reached through a proxy: our sockets stop by themselves
                        raise httpx.ReadTimeout("the request's deadline passed", request=response.request)
                    chunks.append(chunk)
                raw = b"".join(chunks)
        if response.status_code >= 400:  # an error's body is for its message: JSON if it is, else its text
            try:
                return HttpReply(response.status_code, dict(response.headers), parse_json_body(raw))
            except InvalidReply:
                return HttpReply(response.status_code, dict(response.headers), raw.decode("utf-8", "replace"))
        return HttpReply(response.status_code, dict(response.headers), parse_json_body(raw))

    def get_json(self, url: str, api_key: str, timeout: float = PROBE_TIMEOUT_S) -> Any:
        """GET url within `timeout` seconds and parse its JSON; raises httpx.HTTPError (also for an error
        status) or ValueError (InvalidReply)."""
        return _ok(self.request("GET", url, api_key, timeout=timeout), url)

    def post_json(self, url: str, api_key: str, payload: dict[str, Any], timeout: float = PROBE_TIMEOUT_S) -> Any:
        """POST payload as JSON and parse the reply; raises like get_json."""
        return _ok(self.request("POST", url, api_key, payload, timeout=timeout), url)

    def fetch_models(self, base_url: str, api_key: str, timeout: float) -> list[str]:
        """Model ids from GET {base_url}/models; raises like get_json for the caller to word."""
        payload = self.get_json(f"{base_url}/models", api_key, timeout)
        return [str(item.get("id")) for item in payload.get("data", []) if isinstance(item, dict)]

    def close(self) -> None:
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            client.close()


def _ok(reply: HttpReply, url: str) -> Any:
    """The body of a successful reply; httpx.HTTPStatusError (its status named) otherwise."""
    if reply.status >= 400:
        import httpx

        request = httpx.Request("GET", url)
        raise httpx.HTTPStatusError(f"HTTP {reply.status} from {url}", request=request,
                                    response=httpx.Response(reply.status, request=request))
    return reply.body
