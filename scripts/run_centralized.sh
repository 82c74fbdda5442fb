#!/usr/bin/env bash
# Centralized TextGrad baseline (one client holding all training data), per task and seed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="Usage: scripts/run_centralized.sh [--dry-run] [--estimate] [main.py flags...]
Centralized TextGrad baseline (train_centralized) on each of TASKS, once per seed in SEEDS, from
configs/paper/centralized.yaml.
  TASKS   default \"$PAPER_TASKS\"
Runs go to \$FEDTEXTGRAD_OUTPUT_DIR/centralized/, then the table and plots to .../centralized/report/."
parse_args "$USAGE" "$@"
grid_centralized
finish centralized
