# Sourced by the experiment launchers in scripts/: settings from the environment, --help and
# --dry-run, one `python main.py` run per grid cell, then the results table (utils.reporting.report).
# Written for bash 3.2 too (macOS): no associative arrays, empty arrays expanded with ${a[@]+...}.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
TEST_ENGINE="${FEDTEXTGRAD_TEST_ENGINE:-local}"
EVAL_ENGINE="${FEDTEXTGRAD_EVAL_ENGINE:-local}"
SEEDS="${SEEDS:-42}"
PAPER_TASKS="BBH_object_counting BBH_multistep_arithmetic_two GSM8K"
HETERO_TASKS="${HETERO_TASKS:-$PAPER_TASKS}"

abs_path() {
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s\n' "$PWD/$1" ;;
    esac
}

OUTPUT_DIR="$(abs_path "${FEDTEXTGRAD_OUTPUT_DIR:-logs}")"
if [[ -n "${FEDTEXTGRAD_DATA_DIR:-}" ]]; then
    DATA_DIR="$(abs_path "$FEDTEXTGRAD_DATA_DIR")"
elif [[ -d "$REPO_ROOT/../shared/data" ]]; then
    DATA_DIR="$(cd "$REPO_ROOT/../shared/data" && pwd)"
else
    DATA_DIR=""  # main.py then falls back to the Hugging Face hub
fi

DRY_RUN=0
ESTIMATE=0
ESTIMATE_DIR=""
EXTRA_ARGS=()
FAILED=()

COMMON_HELP="Options:
  --dry-run     print the commands, run nothing
  --estimate    run nothing, call no LLM: estimate every run's calls, tokens, time and money (main.py
                --estimate), then print the grid's total and its most expensive runs
  -h, --help    this text
  other arguments are passed on to every python main.py run (they win over the script's flags)

Environment:
  FEDTEXTGRAD_TEST_ENGINE   model whose prompt is trained (default local: embedded llama.cpp server)
  FEDTEXTGRAD_EVAL_ENGINE   model for feedback, optimizer and merging (default local)
  FEDTEXTGRAD_DATA_DIR      task data (default ../shared/data next to the repo if present, else the hub)
  FEDTEXTGRAD_OUTPUT_DIR    where runs go (default logs); each script writes one sub-folder
  SEEDS                     space-separated seeds (default \"42\")
  FEDTEXTGRAD_SPLIT_SIZES   TRAIN,VAL,TEST for small runs, e.g. 3,3,3 (default: the paper's 50,100,100)
  FEDTEXTGRAD_ROUNDS        rounds per run (default 3)
  PYTHON                    interpreter (default python)
A run whose folder already has results.json is skipped; one with only a checkpoint is resumed."

# parse_args USAGE "$@": handles --help and --dry-run, keeps everything else for main.py.
parse_args() {
    local usage="$1"
    shift
    while (($#)); do
        case "$1" in
            --dry-run) DRY_RUN=1 ;;
            --estimate) ESTIMATE=1 ;;
            -h | --help)
                printf '%s\n\n%s\n' "$usage" "$COMMON_HELP"
                exit 0
                ;;
            --)
                shift
                EXTRA_ARGS+=("$@")
                break
                ;;
            *) EXTRA_ARGS+=("$1") ;;
        esac
        shift
    done
    if ((ESTIMATE && !DRY_RUN)); then
        ESTIMATE_DIR="$(mktemp -d)"
        trap 'rm -rf "$ESTIMATE_DIR"' EXIT
    fi
}

die() {
    echo "error: $*" >&2
    exit 2
}

print_cmd() {
    local out="" word
    for word in "$@"; do
        out+="$(printf '%q' "$word") "
    done
    printf '%s\n' "${out% }"
}

# setting_args SETTING TASK CONFIG: the flags that pick the module, its paper config (configs/paper/CONFIG.yaml)
# and its task(s). A homogeneous run of a task for which the reference code has a starting prompt of its own
# (configs/paper/starting_prompt.TASK.txt) starts from it, as the reference's homogeneous module does.
setting_args() {
    local config="$REPO_ROOT/configs/paper/$3.yaml" own_prompt="$REPO_ROOT/configs/paper/starting_prompt.$2.txt"
    case "$1" in
        central) SETTING_ARGS=(--config "$config" --module train_centralized --task "$2") ;;
        homo)
            SETTING_ARGS=(--config "$config" --module train_homo_fed --task "$2")
            [[ ! -f "$own_prompt" ]] || SETTING_ARGS+=(--initial_prompt "@$own_prompt")
            ;;
        hetero)
            # shellcheck disable=SC2206  # the task list is meant to split on spaces
            SETTING_ARGS=(--config "$config" --module train_hetero_fed --task $HETERO_TASKS)
            ;;
        *) die "unknown SETTING '$1': use homo or hetero" ;;
    esac
}

# run_cell GROUP RUN_NAME MAIN_ARGS...: one python main.py run into OUTPUT_DIR/GROUP/RUN_NAME.
run_cell() {
    local group="$1" name="$2"
    shift 2
    local out="$OUTPUT_DIR/$group"
    local cmd=("$PYTHON" "$REPO_ROOT/main.py" "$@" --test_engine "$TEST_ENGINE" --evaluation_engine "$EVAL_ENGINE"
        --output_dir "$out" --run_name "$name")
    [[ -z "$DATA_DIR" ]] || cmd+=(--data_dir "$DATA_DIR")
    [[ -z "${FEDTEXTGRAD_SPLIT_SIZES:-}" ]] || cmd+=(--split_sizes "$FEDTEXTGRAD_SPLIT_SIZES")
    [[ -z "${FEDTEXTGRAD_ROUNDS:-}" ]] || cmd+=(--max_epochs "$FEDTEXTGRAD_ROUNDS")
    cmd+=(${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})
    if [[ -f "$out/$name/results.json" ]]; then
        echo "# done already, skipped: $out/$name"
        return 0
    fi
    [[ ! -f "$out/$name/checkpoint.json" ]] || cmd+=(--resume)
    if ((ESTIMATE)); then
        estimate_cell "$group/$name" "${cmd[@]}"
        return 0
    fi
    if ((DRY_RUN)); then
        print_cmd "${cmd[@]}"
        return 0
    fi
    echo "+ $(print_cmd "${cmd[@]}")" >&2
    local status=0
    "${cmd[@]}" || status=$?
    if ((status == 2 || status >= 128)); then
        # Bad flags, missing data or an unreachable engine hit every cell alike; Ctrl-C means stop.
        echo "stopped: the run above exited with code $status" >&2
        exit "$status"
    fi
    ((status == 0)) || FAILED+=("$out/$name (exit $status)")
}

# endpoint_url ENGINE: the server URL a run of ENGINE talks to, empty when no server of ours is involved
# (the embedded server, which main.py starts itself, and OpenAI).
endpoint_url() {
    case "$1" in
        local) printf '%s\n' "${LOCAL_BASE_URL:-}" ;;
        vllm-*) printf '%s\n' "${VLLM_BASE_URL:-http://localhost:8000/v1}" ;;
        sglang-*) printf '%s\n' "${SGLANG_BASE_URL:-http://localhost:30000/v1}" ;;
        ollama-*) printf '%s\n' "${OLLAMA_BASE_URL:-http://localhost:11434/v1}" ;;
        *) printf '\n' ;;
    esac
}

# wait_for_servers: a server started just before (scripts/llamacpp_serve.sh &) needs seconds to load its
# model; wait until each engine's server answers, at most FEDTEXTGRAD_SERVER_WAIT seconds (default 300).
wait_for_servers() {
    local engine url
    for engine in "$TEST_ENGINE" "$EVAL_ENGINE"; do
        url="$(endpoint_url "$engine")"
        [[ -n "$url" ]] || continue
        "$PYTHON" - "$url" "${FEDTEXTGRAD_SERVER_WAIT:-300}" <<'PY' ||
import sys, time, urllib.error, urllib.parse, urllib.request
url, limit = sys.argv[1].rstrip("/"), float(sys.argv[2])
host = urllib.parse.urlsplit(url).hostname or ""
opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if host in ("localhost", "127.0.0.1", "::1") else []))
deadline, told = time.monotonic() + limit, False
while True:
    try:
        opener.open(url + "/models", timeout=5).close()
        break
    except urllib.error.HTTPError:
        break  # it answers, if not with a model list
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(1)
    if not told:
        print(f"waiting for the LLM server at {url} to answer (up to {limit:.0f} s)", file=sys.stderr, flush=True)
        told = True
    time.sleep(1)
PY
            die "no LLM server answers at $url after ${FEDTEXTGRAD_SERVER_WAIT:-300} s: start it (e.g. scripts/llamacpp_serve.sh) or fix its URL variable"
    done
}

# run_grid GROUP SETTING CONFIG "TASKS" "METHODS" FLAG "VALUES": one run per task x method x value x seed.
# METHODS "-" means no aggregation flag (centralized); FLAG "" means no swept flag.
run_grid() {
    local group="$1" setting="$2" config="$3" tasks="$4" methods="$5" flag="$6" values="$7"
    local task method value seed name
    [[ "$setting" != hetero ]] || tasks="hetero"
    [[ -n "$flag" ]] || values="-"
    ((DRY_RUN || ESTIMATE)) || wait_for_servers  # an estimate calls no LLM
    for task in $tasks; do
        setting_args "$setting" "$task" "$config"
        for method in $methods; do
            for value in $values; do
                for seed in $SEEDS; do
                    local args=("${SETTING_ARGS[@]}" --seed "$seed")
                    name="$task"
                    if [[ "$method" != "-" ]]; then
                        args+=(--aggregate_method "$method")
                        name+="-$method"
                    fi
                    if [[ -n "$flag" ]]; then
                        args+=("$flag" "$value")
                        name+="-${flag#--}$value"
                    fi
                    run_cell "$group" "$name-seed$seed" "${args[@]}"
                done
            done
        done
    done
}

# estimate_cell LABEL COMMAND...: the command with --estimate; its table is kept for the grid's summary.
estimate_cell() {
    local label="$1"
    shift
    local cmd=("$@" --estimate)
    if ((DRY_RUN)); then
        print_cmd "${cmd[@]}"
        return 0
    fi
    mkdir -p "$ESTIMATE_DIR/$(dirname "$label")"
    echo "# estimating $label" >&2
    local status=0
    "${cmd[@]}" --estimate_json "$ESTIMATE_DIR/$label.json" >"$ESTIMATE_DIR/$label.txt" || status=$?
    if ((status != 0)); then
        echo "stopped: the estimate above exited with code $status" >&2
        exit "$status"
    fi
}

# finish GROUP: tabulate the group's runs (report.md + PNGs), list failures, set the exit code.
# With --estimate: the grid's estimated total and its most expensive runs instead.
finish() {
    report "$1" "$1"
    exit_on_failures
}

# report OUT GROUP...: the report over the runs of the GROUP folders into OUTPUT_DIR/OUT/report/ (with --estimate:
# the estimated total of every cell estimated so far).
report() {
    if ((ESTIMATE)); then
        local summary=(env "PYTHONPATH=$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m utils.estimate.summary "${ESTIMATE_DIR:-<estimates>}")
        if ((DRY_RUN)); then
            print_cmd "${summary[@]}"
        else
            "${summary[@]}"
        fi
        return 0
    fi
    local out="$OUTPUT_DIR/$1" group dirs=()
    shift
    for group in "$@"; do
        dirs+=("$OUTPUT_DIR/$group")
    done
    local cmd=(env "PYTHONPATH=$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m utils.reporting.report "${dirs[@]}" --out "$out/report")
    if ((DRY_RUN)); then
        print_cmd "${cmd[@]}"
        return 0
    fi
    echo "+ $(print_cmd "${cmd[@]}")" >&2
    "${cmd[@]}" || echo "warning: no report (see the message above)" >&2
}

# exit_on_failures: list the runs that failed and exit 1, if any did.
exit_on_failures() {
    if ((${#FAILED[@]})); then
        printf 'failed runs:\n' >&2
        printf '  %s\n' "${FAILED[@]}" >&2
        exit 1
    fi
}

# The paper's grids, each over the three paper tasks: one launcher runs one of them (then its report),
# scripts/run_paper.sh the grids of each paper table. TASKS, METHODS, CLIENTS and GRID narrow a launcher's grid.
grid_centralized() { run_grid centralized central centralized "${TASKS:-$PAPER_TASKS}" "-" "" ""; }
grid_homo_fed() {
    run_grid homo_fed homo homo_fed "${TASKS:-$PAPER_TASKS}" "${METHODS:-summarization sum_uid}" --homo_split_num "${CLIENTS:-3}"
}
grid_hetero_fed() { run_grid hetero_fed hetero hetero_fed "" "${METHODS:-summarization sum_uid}" "" ""; }

# sweep_spec NAME: an ablation of the paper: the flag it sweeps (SWEEP_FLAG, "" for the aggregation method),
# its values (SWEEP_VALUES), the aggregation methods (SWEEP_METHODS) and what it varies (SWEEP_WHAT).
sweep_spec() {
    case "$1" in
        local_steps) SWEEP_FLAG=--max_steps SWEEP_VALUES="1 3 5 10" SWEEP_METHODS="sum_uid"
            SWEEP_WHAT="local steps per client per round (--max_steps)" ;;
        clients) SWEEP_FLAG=--homo_split_num SWEEP_VALUES="2 3 5 10" SWEEP_METHODS="sum_uid"
            SWEEP_WHAT="the number of clients (--homo_split_num)" ;;
        batch_size) SWEEP_FLAG=--batch_size SWEEP_VALUES="1 3 5" SWEEP_METHODS="summarization sum_uid"
            SWEEP_WHAT="the local batch size (--batch_size)" ;;
        aggregation) SWEEP_FLAG="" SWEEP_VALUES="" SWEEP_METHODS="concat summarization sum_uid"
            SWEEP_WHAT="the aggregation method (--aggregate_method)" ;;
        *) die "unknown sweep '$1'" ;;
    esac
}

# sweep_grid NAME SETTING: the ablation's grid in the homogeneous (homo) or heterogeneous (hetero) setting,
# into OUTPUT_DIR/sweep_NAME_SETTING/, from configs/paper/sweep_NAME.yaml.
sweep_grid() {
    sweep_spec "$1"
    run_grid "sweep_$1_$2" "$2" "sweep_$1" "${TASKS:-$PAPER_TASKS}" "${METHODS:-$SWEEP_METHODS}" "$SWEEP_FLAG" \
        "${GRID:-$SWEEP_VALUES}"
}

# sweep NAME "$@": the launcher of one ablation (SETTING=homo by default, or hetero), then its report.
sweep() {
    local name="$1"
    shift
    sweep_spec "$name"
    local setting="${SETTING:-homo}"
    parse_args "Usage: scripts/sweep_$name.sh [--dry-run] [--estimate] [main.py flags...]
Ablation over $SWEEP_WHAT: one run per value x task x aggregation method x seed.
  GRID      values (default \"$SWEEP_VALUES\")
  SETTING   homo (default: one task split over clients) or hetero (one client per task)
  TASKS     tasks of SETTING=homo, one sweep each (default \"$PAPER_TASKS\")
  HETERO_TASKS  tasks of SETTING=hetero (default \"$PAPER_TASKS\")
  METHODS   aggregation methods (default \"$SWEEP_METHODS\")
Runs go to \$FEDTEXTGRAD_OUTPUT_DIR/sweep_${name}_<setting>/, then the table and plots to .../report/." "$@"
    [[ "$setting" == homo || "$setting" == hetero ]] || die "SETTING must be homo or hetero, not '$setting'"
    sweep_grid "$name" "$setting"
    finish "sweep_${name}_$setting"
}

# Server launchers: SERVE_HOST/SERVE_PORT pick the address. print_exports tells the user what to set
# so that main.py (and every script here) talks to the server.
SERVE_HOST="${SERVE_HOST:-127.0.0.1}"

server_url() {
    local host="$SERVE_HOST"
    [[ "$host" != "0.0.0.0" ]] || host="127.0.0.1"  # listening everywhere; connect locally
    printf 'http://%s:%s/v1\n' "$host" "$1"
}

# print_exports URL_VARIABLE URL ENGINE_NAME
print_exports() {
    echo "# In the shell that runs the experiments:"
    echo "export $1=$2"
    echo "export FEDTEXTGRAD_TEST_ENGINE=$3 FEDTEXTGRAD_EVAL_ENGINE=$3"
}

# serve "$@": print the server command (dry run) or replace this shell with it; with SERVE_LOG set, the
# server's output goes to that file instead of the terminal.
serve() {
    if ((DRY_RUN)); then
        print_cmd "$@"
        return 0
    fi
    echo "+ $(print_cmd "$@")" >&2
    if [[ -n "${SERVE_LOG:-}" ]]; then
        mkdir -p "$(dirname "$SERVE_LOG")"
        exec "$@" >>"$SERVE_LOG" 2>&1
    fi
    exec "$@"
}

SERVER_HELP="Environment:
  SERVE_HOST   address to listen on (default 127.0.0.1; 0.0.0.0 to serve other machines)
Options: --dry-run prints the commands; -h/--help; other arguments go to the server itself."
