#!/usr/bin/env bash
# Homogeneous FedTextGrad (train_homo_fed): one task split over CLIENTS clients, per task, method and seed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="Usage: scripts/run_homo_fed.sh [--dry-run] [--estimate] [main.py flags...]
Homogeneous FedTextGrad (train_homo_fed): each of TASKS split over CLIENTS clients, with each
aggregation method in METHODS, once per seed in SEEDS, from configs/paper/homo_fed.yaml.
  TASKS     default \"$PAPER_TASKS\"
  METHODS   default \"summarization sum_uid\" (any of concat summarization sum_uid)
  CLIENTS   default 3
Runs go to \$FEDTEXTGRAD_OUTPUT_DIR/homo_fed/, then the table and plots to .../homo_fed/report/."
parse_args "$USAGE" "$@"
grid_homo_fed
finish homo_fed
