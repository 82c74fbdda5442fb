#!/usr/bin/env bash
# Ablation: local batch size (the paper's 1, 3, 5).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
sweep batch_size --batch_size "1 3 5" "summarization sum_uid" "the local batch size (--batch_size)" "$@"
