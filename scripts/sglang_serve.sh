#!/usr/bin/env bash
# An SGLang OpenAI-compatible server (GPU) for engines named sglang-<model>.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_args "Usage: scripts/sglang_serve.sh [--dry-run] [sglang.launch_server flags, e.g. --tp 2]
Serves SGLANG_MODEL with SGLang; use it as engine sglang-<SGLANG_MODEL> (no UID measures: they are
recorded as not available).
  SGLANG_MODEL   Hugging Face model id (default meta-llama/Llama-3.1-8B-Instruct)
  SGLANG_PORT    default 30000
$SERVER_HELP" "$@"
MODEL="${SGLANG_MODEL:-meta-llama/Llama-3.1-8B-Instruct}"
PORT="${SGLANG_PORT:-30000}"
((DRY_RUN)) || "$PYTHON" -c "import sglang" 2>/dev/null ||
    die "sglang is not installed: pip install \"sglang[all]\" (Linux with a CUDA GPU)"

print_exports SGLANG_BASE_URL "$(server_url "$PORT")" "sglang-$MODEL"
serve "$PYTHON" -m sglang.launch_server --model-path "$MODEL" --host "$SERVE_HOST" --port "$PORT" \
    ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
