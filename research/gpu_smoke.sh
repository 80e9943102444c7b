#!/usr/bin/env bash
# Every small variant, one short epoch on each training path (eager, compiled, bf16) on a CUDA
# GPU: finite, better than chance, and steps per second per path. research/gpu_smoke.py says
# what it runs and checks; without a GPU it says so and checks its own plumbing on the CPU.
#
#   MNIST_MIRROR=<dir holding the four MNIST .gz files> bash research/gpu_smoke.sh [--images N] [--variants ...]
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi
exec python research/gpu_smoke.py "$@"
