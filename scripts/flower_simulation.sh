#!/usr/bin/env bash
# A local Flower simulation (docs/flower.md) that stops everything it started when it ends, however it
# ends: the SuperLink, the SuperExec the SuperLink launches, the simulation and its Ray cluster, and Ray's
# session folder. Its exit code is the run's: 0 completed, 1 failed (the ServerApp's one-line reason is
# its last line), 2 a bad run config (checked here, before anything starts), 130/143 stopped.
#
#   scripts/flower_simulation.sh [flwr run options]   e.g. --federation-config "num-supernodes=3" --run-config "max_epochs=2"
#   scripts/flower_simulation.sh stop                 stops one still running (say its terminal was closed)
#
# Environment: FLWR_PORT (default 39091: the SuperLink's port), FLWR_HOME (default ~/.flwr: Flower's
# settings, app installs and this script's SuperLink log and pid file), PYTHON (default python).
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
PORT="${FLWR_PORT:-39091}"
STATE="${FLWR_HOME:-$HOME/.flwr}/fedtextgrad-simulation"
PID_FILE="$STATE/superlink.pid"
BIN="$(dirname "$(command -v "$PYTHON")")"  # flower-superlink and flwr of this Python
export FLWR_LOCAL_SUPERLINK_HTTP_API_PORT="$PORT" FLWR_DISABLE_UPDATE_CHECK=1

# The process groups of a process and of all its descendants: the SuperLink's own, and the SuperExec's
# (its own session), which holds the simulation and every Ray process even once their parents are gone.
groups_of() {
    ps -eo pid=,ppid=,pgid= | awk -v root="$1" '
        { parent[$1] = $2; group[$1] = $3 }
        END { for (p in parent) { q = p; while (q != "" && q != root && q > 1) q = parent[q];
                                   if (q == root) print group[p] } }' | sort -u
}

stop_all() {
    local pid groups group i alive
    pid="$(cat "$PID_FILE" 2>/dev/null)"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        groups="$(groups_of "$pid")"
        for group in $groups; do kill -TERM -- "-$group" 2>/dev/null; done
        for i in $(seq 1 50); do  # up to 10 s for a clean stop, then no more waiting
            alive=0
            for group in $groups; do kill -0 -- "-$group" 2>/dev/null && alive=1; done
            [[ $alive == 0 ]] && break
            sleep 0.2
        done
        for group in $groups; do kill -KILL -- "-$group" 2>/dev/null; done
    fi
    rm -f "$PID_FILE"
    [[ -n "${RAY_TMPDIR:-}" && -d "$RAY_TMPDIR" ]] && rm -rf "$RAY_TMPDIR"
    return 0
}

USAGE="Usage: scripts/flower_simulation.sh [--dry-run] [flwr run options] | stop

Runs FedTextGrad on a local Flower simulation (a SuperLink started here, \`flwr run . --stream\`), then
stops everything it started: the SuperLink, its SuperExec, the simulation and Ray. Exit code: the run's
(0 completed, 1 failed, 2 a bad run config, 130/143 stopped).

Options:
  --dry-run     print the commands, run nothing
  -h, --help    this text
  stop          stop a simulation this script started that is still running
  other arguments go to \`flwr run . --stream\`, e.g.
      --federation-config \"num-supernodes=3\" --run-config \"max_epochs=2 aggregate_method='sum_uid'\"

Environment:
  FLWR_PORT     the SuperLink's port (default 39091)
  FLWR_HOME     Flower's folder (default ~/.flwr), with this script's SuperLink log and pid file
  PYTHON        interpreter (default python)"

case "${1:-}" in
    -h|--help) echo "$USAGE"; exit 0 ;;
    --dry-run)
        shift
        echo "$PYTHON -m fedtextgrad_flower.run_config [the --run-config values]"
        echo "setsid $BIN/flower-superlink --insecure --simulation --disable-runtime-dependency-installation" \
             "--host 127.0.0.1 --port $PORT"
        echo "$BIN/flwr run . --stream $*"
        exit 0 ;;
esac

if [[ "${1:-}" == "stop" ]]; then
    RAY_TMPDIR="$(cat "$STATE/ray_tmpdir" 2>/dev/null)"
    stop_all
    rm -f "$STATE/ray_tmpdir"
    exit 0
fi

run_config=()
for ((i = 1; i <= $#; i++)); do  # the --run-config values, checked as the ServerApp will check them
    if [[ "${!i}" == "--run-config" ]]; then j=$((i + 1)); run_config+=(--run-config "${!j}"); fi
done
"$PYTHON" -m fedtextgrad_flower.run_config ${run_config[@]+"${run_config[@]}"} || exit 2

if [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
    echo "error: a simulation started by this script is still running (SuperLink pid $(cat "$PID_FILE")):" \
         "stop it with scripts/flower_simulation.sh stop" >&2
    exit 2
fi
mkdir -p "$STATE"
# Ray keeps its session folder after a run: it goes in a folder of ours, removed at the end (in /tmp
# whatever TMPDIR says: Ray's socket paths in it must stay under 108 characters).
RAY_TMPDIR="$(mktemp -d /tmp/ftg-ray-XXXXXX)"
export RAY_TMPDIR
echo "$RAY_TMPDIR" > "$STATE/ray_tmpdir"
code=1
trap 'stop_all; rm -f "$STATE/ray_tmpdir"; exit $code' EXIT
trap 'code=130; exit' INT
trap 'code=143; exit' TERM HUP

# Its own session, so a Ctrl-C in this terminal reaches only this script, which stops it in order.
setsid bash -c 'echo $$ > "$0"; exec "$@"' "$PID_FILE" "$BIN/flower-superlink" --insecure --simulation \
    --disable-runtime-dependency-installation --host 127.0.0.1 --port "$PORT" > "$STATE/superlink.log" 2>&1 &
for i in $(seq 1 120); do
    "$PYTHON" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" \
        2>/dev/null && break
    if [[ $i == 120 ]] || ! kill -0 "$(cat "$PID_FILE" 2>/dev/null)" 2>/dev/null && [[ $i -gt 5 ]]; then
        echo "error: the SuperLink did not start on port $PORT (see $STATE/superlink.log): free the port or" \
             "set FLWR_PORT" >&2
        exit
    fi
    sleep 1
done

"$BIN/flwr" run . --stream "$@" | tee "$STATE/run.out"
run_id="$(sed -n 's/.*Successfully started run \([0-9]*\).*/\1/p' "$STATE/run.out" | head -1)"
[[ -n "$run_id" ]] || exit
if ! kill -0 "$(cat "$PID_FILE" 2>/dev/null)" 2>/dev/null; then  # stopped from elsewhere; and asking flwr now
    echo "error: the SuperLink stopped before run $run_id ended" >&2  # would start a SuperLink of its own
    exit
fi
status="$("$BIN/flwr" ls --run-id "$run_id" --format json 2>/dev/null | "$PYTHON" -c '
import json, sys
run = json.load(sys.stdin)["runs"][0]
print(run["status"], run.get("status-details", ""), sep="\t")' 2>/dev/null)"
case "$status" in
    *:completed*) code=0 ;;
    *) echo "error: Flower run $run_id ended as ${status:-unknown}" | tr '\t' ' ' >&2; code=1 ;;
esac
