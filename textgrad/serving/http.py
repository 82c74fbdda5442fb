"""The HTTP side of a runtime: one pooled client per server, and the small JSON requests made through it.

Every HTTP request of the project (the openai SDK's included) goes through `HttpClients.client`, so
connections are reused and loopback servers never see a proxy named in the environment.
"""

from __future__ import annotations

import re
import threading
import urllib.parse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

PROBE_TIMEOUT_S = 5.0


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
                # The openai SDK's own pool limits and redirect policy, so handing it this client changes nothing.
                limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
                loopback = is_loopback(url)
                # A transport of our own turns off proxies from the environment, which loopback never uses.
                transport = _PlainHttpFirst(limits) if loopback and parts.scheme == "http" else None
                client = self._clients[origin] = httpx.Client(
                    trust_env=not loopback, follow_redirects=True, limits=limits,
                    transport=transport)  # type: ignore[arg-type]
            return client

    def get_json(self, url: str, api_key: str, timeout: float = PROBE_TIMEOUT_S) -> Any:
        """GET url and parse its JSON; raises httpx.HTTPError (also for an error status) or ValueError."""
        response = self.client(url).get(url, headers=_headers(api_key), timeout=timeout)
        response.raise_for_status()
        return response.json()

    def post_json(self, url: str, api_key: str, payload: dict[str, Any], timeout: float = PROBE_TIMEOUT_S) -> Any:
        """POST payload as JSON and parse the reply; raises like get_json."""
        response = self.client(url).post(url, headers=_headers(api_key), json=payload, timeout=timeout)
        response.raise_for_status()
        return response.json()

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


class _PlainHttpFirst:
    """An httpx transport (duck-typed: httpx is imported only once a client is made) for a plain-HTTP
    loopback server that loads no CA bundle until an https request needs one (a redirect): httpx loads it
    for every client, tens of milliseconds of a run's start that a local server never uses. https requests
    get httpx's usual verifying transport."""

    def __init__(self, limits: httpx.Limits) -> None:
        import httpx

        self._limits = limits
        self._plain = httpx.HTTPTransport(verify=False, limits=limits)  # no TLS is spoken through it
        self._tls: httpx.HTTPTransport | None = None
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "https":
            return self._plain.handle_request(request)
        with self._lock:
            if self._tls is None:
                import httpx

                self._tls = httpx.HTTPTransport(limits=self._limits)
        return self._tls.handle_request(request)

    def close(self) -> None:
        self._plain.close()
        if self._tls is not None:
            self._tls.close()

    def __enter__(self) -> _PlainHttpFirst:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
