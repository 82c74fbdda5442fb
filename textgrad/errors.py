"""The exceptions of the engine layer: failures a user can act on, worded as one line without secrets."""

from __future__ import annotations


class EngineError(RuntimeError):
    """A failure the user can fix (server down, key missing or rejected); one line, no key in it."""


class MissingKeyError(EngineError, ValueError):
    """An API key the endpoint needs is not set (a ValueError too, as TextGrad's engines raise)."""


class ContextOverflowError(EngineError):
    """A request too long for the model's context window: rejected by the server or known not to fit.

    Never retried unchanged: callers shorten the request once (textgrad.serving.budget) or skip the item.
    """

    def __init__(self, message: str, *, window: int | None = None, prompt_tokens: int | None = None) -> None:
        super().__init__(message)
        self.window = window
        self.prompt_tokens = prompt_tokens


class StructuredOutputRejected(EngineError):
    """The server refused the request's response_format (HTTP 400/422 naming it): ask with tags instead."""
