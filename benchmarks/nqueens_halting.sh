#!/usr/bin/env bash
# Learned halting on N-Queens without the rest of the bench: the anytime DIS with the bench's flags (one seed, the
# paper's 7,200 training puzzles), PPO halting on it with its defaults, both evaluated on 200 held-out puzzles.
#   bash benchmarks/nqueens_halting.sh runs/bench/nqueens_ppo [MINUTES] [PPO_MINUTES] [--overwrite]
# Runs already in OUT are refused unless --overwrite is given (then they are replaced).
set -euo pipefail
O=${1:?usage: nqueens_halting.sh OUT [MINUTES] [PPO_MINUTES] [--overwrite]}
MINUTES=${2:-65}
PPO_MINUTES=${3:-6}
OVERWRITE=${4:-}
[ -z "$OVERWRITE" ] || [ "$OVERWRITE" = --overwrite ] || { echo "nqueens_halting.sh: 4th argument must be --overwrite" >&2; exit 2; }
PY=${PYTHON:-.venv/bin/python}
T="--task nqueens --board 8 --min-given 1 --max-given 7"
mkdir -p "$O"
[ -f "$O/train_pool.npz" ] || $PY -m agents.cli data build $T --n 7200 --seed 0 --out "$O/train_pool.npz"
$PY -m agents.cli train --method dis --T 1 --n 2 --n-sup 6 $T --hidden 64 --batch-size 64 --eval-n 200 --device cpu \
  --precision auto --compile auto --no-final-eval --eval-every-minutes 6.5 --recipe official-code --targets diffusion \
  --anytime-weight 0.5 --seed 0 --dataset "$O/train_pool.npz" --minutes "$MINUTES" --out "$O/dis-anytime" $OVERWRITE
$PY -m agents.cli train --method ppo --mode halting --seed 0 --device cpu --reward-mode verifier \
  --init "$O/dis-anytime" --minutes "$PPO_MINUTES" --out "$O/ppo-dis-anytime" $OVERWRITE
$PY -m agents.cli eval "$O/dis-anytime" --n 200 --json "$O/eval_dis_anytime.json" $OVERWRITE
$PY -m agents.cli eval "$O/ppo-dis-anytime" --n 200 --halting --json "$O/eval_ppo.json" $OVERWRITE
