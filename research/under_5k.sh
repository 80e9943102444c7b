#!/usr/bin/env bash
# The under_5k search (docs: the report's "Design search: under_5k"): each line queues
# one DVC experiment of train@under_5k that trains on the first 60,000 - N training
# images and scores on the last N (train.holdout), never on the test set. One thread
# per run so two queue workers share a 2-core machine. The rounds ran one after the
# other, each planned on the scores before it, each from the recipe its baseline
# commit's params.yaml held then; every experiment here sets that whole recipe
# (`start` below) before its own changes (a later -S wins), so any round runs at
# HEAD, whatever params.yaml's under_5k holds now:
#   rounds 1-3 (baseline cb34fcb): c8-8-10-12-14, SGD, OneCycle peak 0.05, no dropout; N = 5,000
#   round 4    (6dc557d): the same recipe at c8-8-12-12-16, six-conv widths tried; N = 10,000
#   round 7    (8cba6ac): weight decay; round 8 (5c47489): optimiser and models.separable;
#   round 9    (85b06a6): the rule chose its Adam 0.02 candidate (ad59c00); all N = 10,000
# Rounds 5 and 6 (augmentation strength, padded first convs) ran on the branches
# augment-scale and padded, whose records are there; neither changed the choice.
#   bash research/under_5k.sh ROUND; dvc queue start -j 2; dvc queue status   # until every task is Success
#   python research/search.py under_5k --max-params 5000 --out metrics/search/under_5k.json
# which records every experiment, ranks the candidates and prints the ranking.
set -euo pipefail
round=${1:?usage: bash research/under_5k.sh ROUND (1, 2, 3, 4, 7, 8 or 9)}
holdout=5000
model=c8-8-10-12-14
q() {
  # ++ sets a key whether or not params.yaml's entry has it (DVC's Hydra override grammar)
  local start=(model=$model optimizer=sgd lr=0.05 momentum=0.9 weight_decay=0.0 schedule=one_cycle
               dropout=0.0 augment=true)
  dvc exp run --queue train@under_5k -S "++train.holdout=$holdout" -S ++train.cpu_threads=1 -S ++train.seed=1 \
    "${start[@]/#/-S++variants.under_5k.}" "$@"
}

case $round in
1)
# Round 1: three widths with a high OneCycle peak, and the middle one with lr_scheduler's own recipe.
q -n u5k-c8-8-10-12-14-lr05   -S variants.under_5k.model=c8-8-10-12-14 -S variants.under_5k.lr=0.05  -S variants.under_5k.dropout=0.0
q -n u5k-c8-8-10-12-14-lr015  -S variants.under_5k.model=c8-8-10-12-14 -S variants.under_5k.lr=0.015 -S variants.under_5k.dropout=0.03
q -n u5k-c6-8-10-12-14-lr05   -S variants.under_5k.model=c6-8-10-12-14 -S variants.under_5k.lr=0.05  -S variants.under_5k.dropout=0.0
q -n u5k-c8-8-12-12-16-lr05   -S variants.under_5k.model=c8-8-12-12-16 -S variants.under_5k.lr=0.05  -S variants.under_5k.dropout=0.0
;;
2)
# Round 2: lr_scheduler itself on the same holdout (what does 99.4% on the test set
# look like on these 5,000 images?), and the two better widths of round 1 under
# lr_scheduler's recipe and at a middle peak.
q -n u5k-lr_scheduler-baseline -S variants.under_5k.model=lr_scheduler  -S variants.under_5k.lr=0.015 -S variants.under_5k.momentum=0.7 -S variants.under_5k.dropout=0.03
q -n u5k-c8-8-12-12-16-lr015   -S variants.under_5k.model=c8-8-12-12-16 -S variants.under_5k.lr=0.015 -S variants.under_5k.dropout=0.03
q -n u5k-c8-8-12-12-16-lr03    -S variants.under_5k.model=c8-8-12-12-16 -S variants.under_5k.lr=0.03  -S variants.under_5k.dropout=0.0
q -n u5k-c8-8-10-12-14-lr03    -S variants.under_5k.model=c8-8-10-12-14 -S variants.under_5k.lr=0.03  -S variants.under_5k.dropout=0.0
;;
3)
# Round 3: single runs differ by about the validation set's own noise (binomial SE
# 0.11 points on 5,000 images at 99.4%), so the two leaders get seeds 11 and 12, and the wider
# one is tried without augmentation and at a higher peak.
for seed in 11 12; do   # not 2-5: train.seed 2-5 would collide with the seed@ stages' outputs
  q -n u5k-c8-8-10-12-14-lr015-s$seed -S train.seed=$seed -S variants.under_5k.model=c8-8-10-12-14 -S variants.under_5k.lr=0.015 -S variants.under_5k.dropout=0.03
  q -n u5k-c8-8-12-12-16-lr05-s$seed  -S train.seed=$seed -S variants.under_5k.model=c8-8-12-12-16 -S variants.under_5k.lr=0.05  -S variants.under_5k.dropout=0.0
done
q -n u5k-c8-8-12-12-16-lr05-noaug -S variants.under_5k.model=c8-8-12-12-16 -S variants.under_5k.lr=0.05 -S variants.under_5k.dropout=0.0 -S variants.under_5k.augment=false
q -n u5k-c8-8-12-12-16-lr1        -S variants.under_5k.model=c8-8-12-12-16 -S variants.under_5k.lr=0.1  -S variants.under_5k.dropout=0.0
;;
4)
model=c8-8-12-12-16
# Round 4: the round-3 choice met the mean criterion on the test set but not the
# other (3 of 5 seeds at 99.40% on the final epoch, 4 required). The test set
# decided only that the search goes on; this round chooses on validation again.
# Runs on 5,000 images differed by about that split's binomial SE (0.11 points), so
# it scores on the last 10,000 (0.08 a run) and averages three seeds per
# candidate (1, 11 and 12): the round-3 choice, and six convs (a 22 px
# receptive field, GAP over 4x4) at three widths. lr_scheduler on one seed shows
# what its 99.4% test accuracy reads on this split.
holdout=10000
for seed in 1 11 12; do
  q -n u5k4-c8-8-12-12-16-s$seed    -S train.seed=$seed -S variants.under_5k.model=c8-8-12-12-16
  q -n u5k4-c6-8-10-10-12-14-s$seed -S train.seed=$seed -S variants.under_5k.model=c6-8-10-10-12-14
  q -n u5k4-c8-8-8-10-12-14-s$seed  -S train.seed=$seed -S variants.under_5k.model=c8-8-8-10-12-14
  q -n u5k4-c6-8-8-10-12-14-s$seed  -S train.seed=$seed -S variants.under_5k.model=c6-8-8-10-12-14
done
q -n u5k4-lr_scheduler -S variants.under_5k.model=lr_scheduler -S variants.under_5k.lr=0.015 -S variants.under_5k.momentum=0.7 -S variants.under_5k.dropout=0.03
;;
7)
model=c8-8-12-12-16
# Round 7: width, depth, peak lr, dropout (rounds 1-4), augmentation strength and
# padding (5, 6) all moved final validation accuracy by less than its noise, so
# this round changes the optimiser: SGD's weight decay, log-spaced over 1.3
# decades at the round-4 recipe, and 5e-4 at twice the peak lr. Round 4's
# c8-8-12-12-16 runs are the control (weight_decay 0 is the same optimiser step for
# step, tests/test_train.py): 99.280 over seeds 1, 11, 12 on this split. Written
# before the round ran: a candidate replaces the design only if its mean reaches
# 99.33 (0.05 points more); otherwise params.yaml and the test runs stay.
holdout=10000
for seed in 1 11 12; do
  q -n u5k7-wd1e-4-s$seed      -S train.seed=$seed -S variants.under_5k.weight_decay=0.0001
  q -n u5k7-wd5e-4-s$seed      -S train.seed=$seed -S variants.under_5k.weight_decay=0.0005
  q -n u5k7-wd2e-3-s$seed      -S train.seed=$seed -S variants.under_5k.weight_decay=0.002
  q -n u5k7-wd5e-4-lr1-s$seed  -S train.seed=$seed -S variants.under_5k.weight_decay=0.0005 -S variants.under_5k.lr=0.1
done
;;
8)
model=c8-8-12-12-16
# Round 8: weight decay did not help (round 7: 1e-4 99.250, 5e-4 99.257, 2e-3
# 99.157, 5e-4 at peak 0.1 99.280, against 99.280 without). Two directions not
# tried yet, three seeds each, same split and control: the optimiser itself
# (Nesterov SGD at the round-4 recipe; Adam, beta1 cycling 0.85-0.95 under OneCycle,
# at peaks 0.01 and 0.003) and depthwise-separable convs, which buy about twice the
# channels for the budget (models.separable: 4,400, 4,872 and, six convs, 4,768
# parameters). The same bar, written before the round ran: a mean of 99.33.
holdout=10000
for seed in 1 11 12; do
  q -n u5k8-nesterov-s$seed         -S train.seed=$seed -S variants.under_5k.optimizer=nesterov
  q -n u5k8-adam-lr01-s$seed        -S train.seed=$seed -S variants.under_5k.optimizer=adam -S variants.under_5k.lr=0.01
  q -n u5k8-adam-lr003-s$seed       -S train.seed=$seed -S variants.under_5k.optimizer=adam -S variants.under_5k.lr=0.003
  q -n u5k8-s16-16-32-32-32-s$seed  -S train.seed=$seed -S variants.under_5k.model=s16-16-32-32-32
  q -n u5k8-s16-24-32-32-32-s$seed  -S train.seed=$seed -S variants.under_5k.model=s16-24-32-32-32
  q -n u5k8-s16-16-24-24-32-32-s$seed -S train.seed=$seed -S variants.under_5k.model=s16-16-24-24-32-32
done
;;
9)
model=c8-8-12-12-16
# Round 9, planned when round 8 had seeds 1 and 11 of every candidate and seed 12
# of Adam's: both directions cleared the control by more than noise
# (s16-24-32-32-32 99.40, 99.46; Adam at peak 0.01 99.37, 99.32, 99.38; control
# 99.28, 99.32, 99.24), so this round combines them: the widest separable model
# under Adam at peaks 0.01 and 0.02 (0.003 was worse than 0.01). The same bar.
holdout=10000
for seed in 1 11 12; do
  q -n u5k9-s16-24-32-32-32-adam-lr01-s$seed -S train.seed=$seed -S variants.under_5k.model=s16-24-32-32-32 -S variants.under_5k.optimizer=adam -S variants.under_5k.lr=0.01
  q -n u5k9-s16-24-32-32-32-adam-lr02-s$seed -S train.seed=$seed -S variants.under_5k.model=s16-24-32-32-32 -S variants.under_5k.optimizer=adam -S variants.under_5k.lr=0.02
done
;;
*) echo "research/under_5k.sh: no round $round; rounds are 1-4 and 7-9" >&2; exit 2 ;;
esac
