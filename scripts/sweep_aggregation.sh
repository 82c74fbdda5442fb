#!/usr/bin/env bash
# Ablation: how the server merges client prompts (concat, summarization, sum_uid) on each paper task.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
sweep aggregation "$@"
