"""llama-cpp-python's OpenAI-compatible server, plus `GET /props` reporting its context window.

    python -m textgrad.serving.llamacpp_server --model FILE.gguf --n_ctx 8192 ...   (the flags of llama_cpp.server)

llama.cpp's own `llama-server` reports its window at /props; llama-cpp-python's server reports it
nowhere, so runs through a shared server (scripts/llamacpp_serve.sh) fell back to a 2048-token default
while the same model started by the program (textgrad.serving.embedded) used its 8192. Answering /props
the way llama-server does gives both the same window, found by textgrad.serving.window like any other.
"""

from __future__ import annotations

from typing import Any

from llama_cpp.server import app as server_app
from llama_cpp.server.__main__ import main


def context_window() -> int | None:
    """The context the served model was loaded with (None before it is loaded)."""
    model = getattr(getattr(server_app, "_llama_proxy", None), "_current_model", None)
    n_ctx = model.n_ctx() if model is not None else None
    return int(n_ctx) if isinstance(n_ctx, int) and n_ctx > 0 else None


@server_app.router.get("/props", include_in_schema=False)
async def props() -> dict[str, Any]:
    n_ctx = context_window()
    return {"n_ctx": n_ctx, "default_generation_settings": {"n_ctx": n_ctx}}


if __name__ == "__main__":
    main()
