#!/bin/bash
# Contrast-inversion A/B: baseline reproduction check (first epoch), then --invert-prob 0.5 with seeds 42, 1, 2.
cd /work/main
COMMON="--dataset data/all-sources --sources figshare,br35h --protocol grouped --folds 0 --epochs 20 --image-size 96 --batch-size 64 --lr 1e-3 --paste-prob 0.3 --mirror-prob 0.5 --workers 1"
.venv/bin/python train.py $COMMON --output-dir runs/check-paste-mirror-96 > runs/check-paste-mirror-96.log 2>&1 &
pid=$!
while [ ! -s runs/check-paste-mirror-96/log.jsonl ] && kill -0 $pid 2>/dev/null; do sleep 5; done
kill $pid; wait $pid
for seed in 42 1 2; do
  suffix=$([ $seed = 42 ] && echo "" || echo "-seed$seed")
  .venv/bin/python train.py $COMMON --invert-prob 0.5 --seed $seed --output-dir runs/ab-invert-paste-mirror-96$suffix --resume > runs/ab-invert-paste-mirror-96$suffix.log 2>&1
done
echo chain done
