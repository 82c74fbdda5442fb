"""What broken servers and proxies send instead of a chat completion: the fake server's `hostile` option.

    FakeServer(hostile="html", hostile_requests=2)       # the first two chat requests get a proxy's page
    python -m bench.fake_server --hostile trickle --trickle_seconds 1

Kinds:
  html         HTTP 200 with an HTML page (a captive portal or a proxy's error page)
  bad_utf8     HTTP 200, a chat completion whose bytes are not valid UTF-8
  surrogate    HTTP 200, a chat completion whose text is the JSON escape of a lone surrogate (\\ud800)
  no_choices   HTTP 200, JSON that is no chat completion
  huge         HTTP 200, a chat completion of `huge_chars` characters, whatever max_tokens asked
  retry_after  HTTP 429 with Retry-After: `retry_after` seconds
  trickle      a good reply, status line and headers included, one byte every `trickle_seconds`
  hang         the connection accepted, then nothing until the server stops
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

HOSTILE_KINDS = ("html", "bad_utf8", "surrogate", "no_choices", "huge", "retry_after", "trickle", "hang")
HANG = "hang"
PROXY_PAGE = (b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
              b"<body><h1>Bad Gateway</h1><p>The upstream server did not answer.</p></body></html>\n")


@dataclass(frozen=True)
class RawReply:
    """A reply written byte for byte, as the handler's JSON replies never would be."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    trickle: float = 0.0  # seconds before each byte of the whole response; 0: all at once


def completion(model: str, content: str) -> dict[str, Any]:
    return {"id": "chatcmpl-hostile", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": max(1, len(content) // 4),
                      "total_tokens": 10 + max(1, len(content) // 4)}}


def hostile_reply(kind: str, model: str, *, retry_after: float, trickle_seconds: float,
                  huge_chars: int) -> RawReply:
    """The reply of one hostile kind (every kind but `hang`, which the server plays itself)."""
    good = json.dumps(completion(model, "Answer: 1")).encode()
    if kind == "html":
        return RawReply(200, PROXY_PAGE, "text/html; charset=utf-8")
    if kind == "bad_utf8":
        return RawReply(200, good.replace(b"Answer: 1", b"Answer: \xff\xfe 1"))
    if kind == "surrogate":
        return RawReply(200, good.replace(b"Answer: 1", b"Answer: \\ud800 1"))
    if kind == "no_choices":
        return RawReply(200, b'{"status": "ok", "detail": "queued"}')
    if kind == "huge":
        return RawReply(200, json.dumps(completion(model, "Be careful. " * (huge_chars // 12))).encode())
    if kind == "retry_after":
        body = json.dumps({"error": {"message": "rate limited: slow down", "code": 429}}).encode()
        return RawReply(429, body, headers={"Retry-After": f"{retry_after:g}"})
    if kind == "trickle":
        return RawReply(200, good, trickle=trickle_seconds)
    raise ValueError(f"hostile must be one of {', '.join(HOSTILE_KINDS)}")


class Hostility:
    """A server's `hostile` option: which chat requests get which kind (called under the server's lock)."""

    def __init__(self, kind: str | None, requests: int | None, retry_after: float, trickle_seconds: float,
                 huge_chars: int) -> None:
        if kind is not None and kind not in HOSTILE_KINDS:
            raise ValueError(f"hostile must be one of {', '.join(HOSTILE_KINDS)}")
        self.kind, self.left = kind, requests  # left: chat requests still to answer so (None: every one)
        self.options = {"retry_after": retry_after, "trickle_seconds": trickle_seconds, "huge_chars": huge_chars}
        self.sent = 0

    def due(self) -> str | None:
        """The kind the next chat request gets, if any."""
        if self.kind is None or self.left == 0:
            return None
        if self.left is not None:
            self.left -= 1
        self.sent += 1
        return self.kind

    def reply(self, model: str) -> RawReply:
        return hostile_reply(self.kind or "", model, **self.options)


def response_bytes(reply: RawReply) -> bytes:
    """The whole HTTP/1.1 response: status line, headers and body."""
    reason = {200: "OK", 429: "Too Many Requests"}.get(reply.status, "Error")
    head = [f"HTTP/1.1 {reply.status} {reason}", f"Content-Type: {reply.content_type}",
            f"Content-Length: {len(reply.body)}", *(f"{k}: {v}" for k, v in reply.headers.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body
