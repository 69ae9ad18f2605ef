#!/bin/bash
# Dark-lesion A/B: the seed-42 baseline's first epoch must replay the record's, then --dark-lesion-prob 0.5 with
# seeds 42 and 1, then seed 2's baseline and try. Run from the repository root.
COMMON="--dataset data/all-sources --sources figshare,br35h --protocol grouped --folds 0 --epochs 20 --image-size 96 --batch-size 64 --lr 1e-3 --paste-prob 0.3 --mirror-prob 0.5 --workers 1"
rm -rf runs/check-dark-lesion-96
.venv/bin/python train.py $COMMON --output-dir runs/check-dark-lesion-96 > runs/check-dark-lesion-96.log 2>&1 &
pid=$!
while [ ! -s runs/check-dark-lesion-96/log.jsonl ] && kill -0 $pid 2>/dev/null; do sleep 5; done
kill $pid; wait $pid
grep -q '"train_loss": 1.3181263438442297,' runs/check-dark-lesion-96/log.jsonl || { echo "baseline does not replay"; exit 1; }
echo "baseline replays"
for seed in 42 1 2; do
  suffix=$([ $seed = 42 ] && echo "" || echo "-seed$seed")
  [ $seed = 2 ] && .venv/bin/python train.py $COMMON --seed 2 --output-dir runs/ab-paste-mirror-96-seed2 --resume > runs/ab-paste-mirror-96-seed2.log 2>&1
  .venv/bin/python train.py $COMMON --dark-lesion-prob 0.5 --seed $seed --output-dir runs/ab-dark-paste-mirror-96$suffix --resume > runs/ab-dark-paste-mirror-96$suffix.log 2>&1
done
echo chain done
