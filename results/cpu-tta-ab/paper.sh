#!/bin/bash
# The paper's protocol, test-time views (results/cpu-tta-ab/README.md, its rule fixed before the runs): fold 0 of
# the plain stratified folds of brain-tumor-mri-4k, the default recipe at 96 px, seeds 42 and 1, then tta.py on
# both fold models. Run from the repository root.
COMMON="--dataset data/all-sources --sources figshare,br35h --protocol random --folds 0 --epochs 20 --image-size 96 --batch-size 64 --lr 1e-3 --workers 1 --resume"
for seed in 42 1; do
  .venv/bin/python train.py $COMMON --seed $seed --output-dir runs/tta-paper-96-seed$seed > runs/tta-paper-96-seed$seed.log 2>&1
done
PYTHONPATH=. .venv/bin/python results/cpu-tta-ab/tta.py data/all-sources ../shared/data/brain-tumor-mri-sartaj \
    runs/tta-paper-96-seed42 runs/tta-paper-96-seed1 > results/cpu-tta-ab/tta-paper.txt 2>runs/tta-paper.err
echo chain done
