#!/usr/bin/env bash
# An Ollama server with OLLAMA_MODEL pulled, for engines named ollama-<model>.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_args "Usage: scripts/ollama_serve.sh [--dry-run]
Starts 'ollama serve' (unless one already answers on the port), pulls OLLAMA_MODEL, and keeps the
server in the foreground until Ctrl-C. Use it as engine ollama-<OLLAMA_MODEL> (no UID measures).
  OLLAMA_MODEL   default llama3.1:8b
  OLLAMA_PORT    default 11434
$SERVER_HELP" "$@"
MODEL="${OLLAMA_MODEL:-llama3.1:8b}"
PORT="${OLLAMA_PORT:-11434}"
export OLLAMA_HOST="$SERVE_HOST:$PORT"
URL="$(server_url "$PORT")"

print_exports OLLAMA_BASE_URL "$URL" "ollama-$MODEL"
if ((DRY_RUN)); then
    print_cmd env "OLLAMA_HOST=$OLLAMA_HOST" ollama serve
    print_cmd env "OLLAMA_HOST=$OLLAMA_HOST" ollama pull "$MODEL"
    exit 0
fi
command -v ollama >/dev/null || die "ollama is not installed: see https://ollama.com/download"
answers() { curl -sf "${URL%/v1}/api/version" >/dev/null 2>&1; }
if answers; then
    echo "# an Ollama server already answers at ${URL%/v1}; pulling $MODEL into it" >&2
    exec ollama pull "$MODEL"
fi
ollama serve &
SERVER_PID=$!
trap 'kill "$SERVER_PID" 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 60); do
    answers && break
    kill -0 "$SERVER_PID" 2>/dev/null || die "ollama serve exited during start-up (see its output above)"
    sleep 1
done
answers || die "ollama serve did not answer within 60 s at ${URL%/v1}"
ollama pull "$MODEL"
echo "# serving $MODEL at $URL; Ctrl-C stops the server" >&2
wait "$SERVER_PID"
