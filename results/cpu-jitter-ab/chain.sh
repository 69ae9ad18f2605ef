#!/bin/bash
# Wider-jitter A/B (results/cpu-jitter-ab/README.md, its rule fixed before the runs): the seed-42 baseline's first
# epoch must replay the record's (with this commit's augment()), then --jitter-scale 2 with seeds 42 and 1 against
# the dark-lesion A/B's baselines, each scored as soon as it ends. Run from the repository root.
COMMON="--dataset data/all-sources --sources figshare,br35h --protocol grouped --folds 0 --epochs 20 --image-size 96 --batch-size 64 --lr 1e-3 --paste-prob 0.3 --mirror-prob 0.5 --workers 1"
bash results/replay-check.sh runs/check-jitter-96 1.3181263438442297 results/cpu-jitter-ab/check-jitter-96-log.jsonl \
    $COMMON || exit 1
for seed in 42 1; do
  suffix=$([ $seed = 42 ] && echo "" || echo "-seed$seed")
  .venv/bin/python train.py $COMMON --jitter-scale 2 --seed $seed --output-dir runs/ab-jitter2-paste-mirror-96$suffix \
      --resume > runs/ab-jitter2-paste-mirror-96$suffix.log 2>&1
  bash results/cpu-jitter-ab/score.sh "$suffix"
done
echo chain done
