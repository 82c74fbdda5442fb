#!/usr/bin/env bash
# A vLLM OpenAI-compatible server (GPU) for engines named vllm-<model>.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_args "Usage: scripts/vllm_serve.sh [--dry-run] [vllm serve flags, e.g. --tensor-parallel-size 2]
Serves VLLM_MODEL with vLLM; use it as engine vllm-<VLLM_MODEL>. vLLM returns prompt
log-probabilities, so runs against it record UID measures.
  VLLM_MODEL   Hugging Face model id (default meta-llama/Llama-3.1-8B-Instruct)
  VLLM_PORT    default 8000
$SERVER_HELP" "$@"
MODEL="${VLLM_MODEL:-meta-llama/Llama-3.1-8B-Instruct}"
PORT="${VLLM_PORT:-8000}"
((DRY_RUN)) || command -v vllm >/dev/null || die "vllm is not installed: pip install vllm (Linux with a CUDA GPU)"

print_exports VLLM_BASE_URL "$(server_url "$PORT")" "vllm-$MODEL"
serve vllm serve "$MODEL" --host "$SERVE_HOST" --port "$PORT" ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
