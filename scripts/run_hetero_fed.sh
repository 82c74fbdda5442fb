#!/usr/bin/env bash
# Heterogeneous FedTextGrad (train_hetero_fed): one client per task, per method and seed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="Usage: scripts/run_hetero_fed.sh [--dry-run] [--estimate] [main.py flags...]
Heterogeneous FedTextGrad (train_hetero_fed): one client per task of HETERO_TASKS, the merged prompt
serves them all; each aggregation method in METHODS, once per seed in SEEDS, from
configs/paper/hetero_fed.yaml.
  HETERO_TASKS   default \"$PAPER_TASKS\" (object counting, multistep arithmetic, GSM8K)
  METHODS        default \"summarization sum_uid\" (any of concat summarization sum_uid)
Runs go to \$FEDTEXTGRAD_OUTPUT_DIR/hetero_fed/, then the table and plots to .../hetero_fed/report/."
parse_args "$USAGE" "$@"
grid_hetero_fed
finish hetero_fed
