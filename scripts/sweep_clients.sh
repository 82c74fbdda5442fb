#!/usr/bin/env bash
# Ablation: number of clients sharing one task (the paper's 2, 3, 5, 10) on each paper task.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
[[ "${SETTING:-homo}" == homo ]] || die "sweep_clients varies --homo_split_num: use SETTING=homo (hetero has one client per task)"
sweep clients "$@"
