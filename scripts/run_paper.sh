#!/usr/bin/env bash
# The paper's tables, each from its grids over the three paper tasks, then its report.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TABLES="main aggregation local_steps clients batch_size"
USAGE="Usage: scripts/run_paper.sh [--dry-run] [--estimate] [TABLE...] [main.py flags...]
The paper's tables (default: all of them), each from the runs of its grids (from configs/paper/), then
its report (report.md with the table, and plots) into \$FEDTEXTGRAD_OUTPUT_DIR/paper_<TABLE>/report/:
  main          centralized vs homogeneous vs heterogeneous FedTextGrad, test accuracy and its drop per
                task (grids of run_centralized.sh, run_homo_fed.sh, run_hetero_fed.sh)
  aggregation   concatenation vs summarization vs UID summarization: accuracy, prompt length, merges
                that fell back, complexity (sweep_aggregation.sh, homogeneous and heterogeneous)
  local_steps   accuracy against local steps 1, 3, 5, 10 (sweep_local_steps.sh)
  clients       accuracy against clients 2, 3, 5, 10 (sweep_clients.sh)
  batch_size    accuracy against batch size 1, 3, 5 (sweep_batch_size.sh, homogeneous and heterogeneous)
--estimate prints the calls, tokens, time and money of every run of the tables asked for, and calls no LLM.
Runs already finished in an earlier launch (of this script or of the launchers) are skipped.
METHODS, GRID, SETTING, CLIENTS and TASKS do not apply here: each table is the paper's grid."

table_grids() {
    case "$1" in
        main) grid_centralized && grid_homo_fed && grid_hetero_fed ;;
        aggregation | batch_size) sweep_grid "$1" homo && sweep_grid "$1" hetero ;;
        local_steps | clients) sweep_grid "$1" homo ;;
    esac
}

table_groups() {
    case "$1" in
        main) echo "centralized homo_fed hetero_fed" ;;
        aggregation | batch_size) echo "sweep_$1_homo sweep_$1_hetero" ;;
        local_steps | clients) echo "sweep_$1_homo" ;;
    esac
}

unset METHODS GRID SETTING CLIENTS TASKS
asked=() rest=()
for arg in "$@"; do
    if [[ " $TABLES " == *" $arg "* ]]; then
        asked+=("$arg")
    else
        rest+=("$arg")
    fi
done
((${#asked[@]})) || read -r -a asked <<<"$TABLES"
parse_args "$USAGE" ${rest[@]+"${rest[@]}"}
for table in "${asked[@]}"; do
    table_grids "$table"
done
if ((ESTIMATE)); then
    report paper  # one total over every cell estimated
    exit 0
fi
for table in "${asked[@]}"; do
    # shellcheck disable=SC2046  # the group list is meant to split on spaces
    report "paper_$table" $(table_groups "$table")
done
exit_on_failures
