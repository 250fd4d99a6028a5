#!/usr/bin/env bash
# Every GPU check in one call (benchmarks/gpu_check.py says what is measured), bounded to 8 minutes.
# Writes benchmarks/results/gpu_check.json (or the path in $OUT/gpu_check.json when OUT is set, as on
# a lent device machine). Without a CUDA device it prints that it skipped and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
export MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1
out="benchmarks/results/gpu_check.json"
if [ -n "${OUT:-}" ]; then out="$OUT/gpu_check.json"; fi
exec timeout 480 "$PY" benchmarks/gpu_check.py --out "$out" "$@"
