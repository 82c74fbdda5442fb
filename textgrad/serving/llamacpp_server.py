"""llama-cpp-python's OpenAI-compatible server, plus `GET /props` reporting its context window.

    python -m textgrad.serving.llamacpp_server --model FILE.gguf --n_ctx 8192 ...   (the flags of llama_cpp.server)

llama.cpp's own `llama-server` reports its window at /props; llama-cpp-python's server reports it
nowhere, so runs through a shared server (scripts/llamacpp_serve.sh) fell back to a 2048-token default
while the same model started by the program (textgrad.serving.embedded) used its 8192. Answering /props
the way llama-server does gives both the same window, found by textgrad.serving.window like any other.
"""

from __future__ import annotations

from typing import Any

import llama_cpp.llama_cpp as llama_capi
from llama_cpp.server import app as server_app
from llama_cpp.server.__main__ import main

_library_model_params = llama_capi.llama_model_default_params


def model_params_without_extra_buffers() -> llama_capi.llama_model_params:
    """llama.cpp's default model parameters, without its extra weight buffers.

    Those buffers repack the weights for the CPU's matrix units; on CPUs that report Intel AMX, a build of
    llama-cpp-python compiled for the machine multiplies Q4_1 weights (the packaged SmolLM2) with AMX
    tile instructions, and under some hypervisors the first `ldtilecfg` raises a general protection
    fault that kills the server on its first request. Plain CPU buffers work everywhere; for a 135M
    model they cost nothing measurable.
    """
    params = _library_model_params()
    params.use_extra_bufts = False
    return params


# llama_cpp.Llama reads its defaults through this module attribute when it loads the model.
llama_capi.llama_model_default_params = model_params_without_extra_buffers


def context_window() -> int | None:
    """The context the served model was loaded with (None before it is loaded)."""
    model = getattr(getattr(server_app, "_llama_proxy", None), "_current_model", None)
    n_ctx = model.n_ctx() if model is not None else None
    return int(n_ctx) if isinstance(n_ctx, int) and n_ctx > 0 else None


async def props() -> dict[str, Any]:
    n_ctx = context_window()
    return {"n_ctx": n_ctx, "default_generation_settings": {"n_ctx": n_ctx}}


if __name__ == "__main__":
    # Only when serving: importing this module changes the model parameters and nothing else.
    server_app.router.get("/props", include_in_schema=False)(props)
    main()
