#!/usr/bin/env bash
# GPU check: fine-tune efficientnet_lite0 (offline weights) on the demo competition for one
# fold and print images/s with and without autocast + channels_last, the out-of-memory back-off
# events and peak GPU memory. About 3-5 minutes on one modern GPU (the limit is 8).
# Usage: bench/gpu_check.sh [WORK_DIR] [extra options of bench/gpu_check.py]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

WORK_ARGS=()
if [[ $# -gt 0 && "$1" != -* ]]; then
    WORK_ARGS=(--work "$1")
    shift
fi
# timeout: the check must never hold a machine longer than 8 minutes
exec timeout --signal=INT 480 "$PYTHON" bench/gpu_check.py "${WORK_ARGS[@]}" "$@"
