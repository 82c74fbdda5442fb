#!/usr/bin/env bash
# Ablation: local steps per round (the paper's 1, 3, 5, 10) on each paper task.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
sweep local_steps "$@"
