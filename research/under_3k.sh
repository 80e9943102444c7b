#!/usr/bin/env bash
# The under_3k design search (docs/under_3k.md: its protocol, budget and stopping rule, committed
# before round 1 ran). Every experiment is a DVC experiment of the train@under_5k stage with the
# whole recipe set here (under_5k's stage is only the vehicle: nothing of under_5k's own entry is
# kept) that trains on the first 50,000 training images and scores on the last 10,000
# (train.holdout), never on the test set; one thread per run.
#   bash research/under_3k.sh 1                       # round 1: eight architectures, seed 1
#   bash research/under_3k.sh 2 MODEL_A MODEL_B       # round 2: round 1's best two at two more peaks
#   bash research/under_3k.sh 3 MODEL:LR MODEL:LR MODEL:LR   # round 3: the best three, seeds 2 and 3
#   MNIST_MIRROR=... dvc queue start -j 2; dvc queue status   # until every task is Success
#   python research/search.py under_5k --design under_3k --prefix u3k --max-params 3000 \
#     --out metrics/search/under_3k.json
set -euo pipefail
round=${1:?usage: bash research/under_3k.sh ROUND [CANDIDATES...] (docs/under_3k.md)}
shift
q() {  # q NAME MODEL LR SEED: one experiment, the whole recipe set (++ adds a key the entry lacks)
  dvc exp run --queue train@under_5k -n "$1" -S ++train.holdout=10000 -S ++train.cpu_threads=1 \
    -S ++train.seed="$4" -S ++variants.under_5k.model="$2" -S ++variants.under_5k.lr="$3" \
    -S ++variants.under_5k.optimizer=adam -S ++variants.under_5k.momentum=0.9 \
    -S ++variants.under_5k.weight_decay=0.0 -S ++variants.under_5k.schedule=one_cycle \
    -S ++variants.under_5k.dropout=0.0 -S ++variants.under_5k.augment=true
}

case $round in
1)
  # separable at five and six convs, and compact, each under 3,000 parameters; Adam, OneCycle peak 0.02
  for model in s12-16-24-24-24 s16-16-20-24-24 s12-16-20-24-28 s8-16-24-24-24 s10-16-20-24-24 \
               s8-12-16-20-24-24 c6-6-8-10-12 c8-8-8-8-10; do
    q "u3k1-$model" "$model" 0.02 1
  done
  ;;
2)
  [ $# -eq 2 ] || { echo "round 2 takes round 1's best two models (docs/under_3k.md)" >&2; exit 2; }
  for model in "$@"; do
    for lr in 0.01 0.04; do q "u3k2-$model-lr$lr" "$model" "$lr" 1; done
  done
  ;;
3)
  [ $# -eq 3 ] || { echo "round 3 takes the best three MODEL:LR of rounds 1 and 2 (docs/under_3k.md)" >&2; exit 2; }
  for candidate in "$@"; do
    model=${candidate%%:*} lr=${candidate##*:}
    for seed in 2 3; do q "u3k3-$model-lr$lr-s$seed" "$model" "$lr" "$seed"; done
  done
  ;;
*)
  echo "round $round: the protocol has rounds 1, 2 and 3 (docs/under_3k.md)" >&2; exit 2
  ;;
esac
