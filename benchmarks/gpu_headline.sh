#!/usr/bin/env bash
# The headline on one GPU: 9x9 Sudoku with 28-34 givens, TRM (21 ... 336 NFE, halting head) against DIS (both
# recipes, diffusion and solver-trace targets) and learned halting (PPO), bf16 autocast, width 256, batch 512.
# 437 s end to end on one H200 (2026-11-26, BENCHMARKS.md); the whole command is killed after $HEADLINE_TIMEOUT seconds (default 540)
# (SIGINT: each training run finishes its step and writes a checkpoint) and, run again, continues where it stopped
# (finished runs are kept, stopped ones resume).
#
#   bash benchmarks/gpu_headline.sh [OUT] [extra bench flags]
#   PYTHON=.venv/bin/python bash benchmarks/gpu_headline.sh runs/bench/gpu_headline
#
# Extra flags override the preset, e.g. a CPU rehearsal with a tiny budget:
#   bash benchmarks/gpu_headline.sh /tmp/rehearsal --device cpu --minutes 0.1 --ppo-minutes 0.1 --hidden 16 --pool 200
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/bench/gpu_headline}
shift || true
PYTHON=${PYTHON:-python}
"$PYTHON" -c 'import torch; print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA")'
exec timeout --signal=INT --kill-after=30 "${HEADLINE_TIMEOUT:-540}" \
    "$PYTHON" -m agents.cli bench nfe-vs-accuracy --preset gpu --out "$OUT" "$@"
