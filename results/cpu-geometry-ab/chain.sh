#!/bin/bash
# Geometry-only A/B on the paper's protocol (results/cpu-geometry-ab/README.md, its rule fixed before the runs):
# fold 0 of the plain stratified folds of brain-tumor-mri-4k, the default augmentation against --geometry-only,
# seeds 42 and 1, one run after the other. Run from the repository root.
COMMON="--dataset data/all-sources --sources figshare,br35h --protocol random --folds 0 --epochs 20 --image-size 96 --batch-size 64 --lr 1e-3 --workers 1 --resume"
for seed in 42 1; do
  .venv/bin/python train.py $COMMON --seed $seed --output-dir runs/paper-96-seed$seed > runs/paper-96-seed$seed.log 2>&1
  .venv/bin/python train.py $COMMON --seed $seed --geometry-only --output-dir runs/paper-geometry-96-seed$seed \
      > runs/paper-geometry-96-seed$seed.log 2>&1
done
for seed in 42 1; do
  .venv/bin/python evaluation.py external ../shared/data/brain-tumor-mri-sartaj --model runs/paper-96-seed$seed/fold-0 \
      --model runs/paper-geometry-96-seed$seed/fold-0 --output results/cpu-geometry-ab/external-sartaj-seed$seed.json \
      > runs/paper-external-seed$seed.log 2>&1
done
echo chain done
