#!/usr/bin/env bash
# Ablation: local batch size (the paper's 1, 3, 5) on each paper task.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
sweep batch_size "$@"
