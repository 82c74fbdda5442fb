#!/usr/bin/env bash
# Ablation: local steps per round (the paper's 1, 3, 5, 10).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
sweep local_steps --max_steps "1 3 5 10" "sum_uid" "local steps per client per round (--max_steps)" "$@"
