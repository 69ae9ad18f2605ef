#!/bin/bash
# The baselines on this machine (the record's did not replay here), then the other seeds' inversion runs.
cd /work/main
COMMON="--dataset data/all-sources --sources figshare,br35h --protocol grouped --folds 0 --epochs 20 --image-size 96 --batch-size 64 --lr 1e-3 --paste-prob 0.3 --mirror-prob 0.5 --workers 1"
for seed in 42 1; do
  suffix=$([ $seed = 42 ] && echo "" || echo "-seed$seed")
  .venv/bin/python train.py $COMMON --seed $seed --output-dir runs/ab-paste-mirror-96$suffix --resume > runs/ab-paste-mirror-96$suffix.log 2>&1
  [ $seed = 42 ] || .venv/bin/python train.py $COMMON --invert-prob 0.5 --seed $seed --output-dir runs/ab-invert-paste-mirror-96$suffix --resume > runs/ab-invert-paste-mirror-96$suffix.log 2>&1
done
echo done
