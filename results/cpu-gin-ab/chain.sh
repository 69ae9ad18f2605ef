#!/bin/bash
# GIN A/B (results/cpu-gin-ab/README.md, its rule fixed before the runs): the seed-42 baseline's first
# epoch must replay the record's (this commit's training step with the switch off), then --gin-prob 0.5 with
# seeds 42 and 1 against the dark-lesion A/B's baselines, each scored as soon as it ends; a seed whose sartaj AUROC
# falls ends the A/B. Run from the repository root.
COMMON="--dataset data/all-sources --sources figshare,br35h --protocol grouped --folds 0 --epochs 20 --image-size 96 --batch-size 64 --lr 1e-3 --paste-prob 0.3 --mirror-prob 0.5 --workers 1"
rm -rf runs/check-gin-96
.venv/bin/python train.py $COMMON --output-dir runs/check-gin-96 > runs/check-gin-96.log 2>&1 &
pid=$!
while [ ! -s runs/check-gin-96/log.jsonl ] && kill -0 $pid 2>/dev/null; do sleep 5; done
kill $pid; wait $pid
grep -q '"train_loss": 1.3181263438442297,' runs/check-gin-96/log.jsonl || { echo "baseline does not replay"; exit 1; }
cp runs/check-gin-96/log.jsonl results/cpu-gin-ab/check-gin-96-log.jsonl
echo "baseline replays"
for seed in 42 1; do
  suffix=$([ $seed = 42 ] && echo "" || echo "-seed$seed")
  .venv/bin/python train.py $COMMON --gin-prob 0.5 --seed $seed --output-dir runs/ab-gin-paste-mirror-96$suffix \
      --resume > runs/ab-gin-paste-mirror-96$suffix.log 2>&1
  bash results/cpu-gin-ab/score.sh "$suffix"
  PYTHONPATH=. .venv/bin/python - "$suffix" <<'PY' || { echo "AUROC fell: the A/B ends"; break; }
import json, sys
suffix = sys.argv[1]
aurocs = {}
for line in open("results/cpu-gin-ab/sartaj-scores.txt"):
    fields = line.split(" | ")
    if len(fields) > 1 and fields[1].startswith("AUROC") and fields[0].endswith(f"96{suffix}/fold-0"):
        aurocs[fields[0].split("/")[1].split("-")[1]] = float(fields[1].split()[1])
print(aurocs)
sys.exit(0 if aurocs["gin"] > aurocs["paste"] else 1)
PY
done
echo chain done
