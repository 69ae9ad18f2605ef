#!/bin/bash
# GIN on the release's position towards Br35H (results/cpu-gin-healthy-only-ab/README.md, its rule fixed before the
# runs): per seed, the baseline (the weight-averaging A/B's recipe) and --gin-prob 0.5, then both scored by
# found_at_false_alarms.py; a seed whose tumors found at 5% false alarms do not rise ends the A/B. Run from the
# repository root.
COMMON="--dataset data/all-sources --sources figshare,br35h,sartaj/notumor --protocol grouped --folds 0 --epochs 20 --image-size 96 --batch-size 64 --lr 1e-3 --paste-prob 0.3 --workers 1"
out=results/cpu-gin-healthy-only-ab
for seed in 42 1; do
  suffix=$([ $seed = 42 ] && echo "" || echo "-seed$seed")
  base=runs/healthy-only-paste-96$suffix try=runs/healthy-only-gin-paste-96$suffix
  .venv/bin/python train.py $COMMON --seed $seed --output-dir $base --resume > $base.log 2>&1
  .venv/bin/python train.py $COMMON --gin-prob 0.5 --seed $seed --output-dir $try --resume > $try.log 2>&1
  for run in $base $try; do cp $run/cv_results.json $out/$(basename $run)-cv_results.json; cp $run/log.jsonl $out/$(basename $run)-log.jsonl; done
  PYTHONPATH=. .venv/bin/python results/gpu-4/found_at_false_alarms.py $base/fold-0 $try/fold-0 2>&1 \
      | grep -v "Loading weights" | tee -a $out/found-at-false-alarms.txt
  PYTHONPATH=. .venv/bin/python - $base/fold-0 $try/fold-0 <<'PY' || { echo "not more found at 5%: the A/B ends"; break; }
import sys
found = {}
for line in open("results/cpu-gin-healthy-only-ab/found-at-false-alarms.txt"):
    fields = line.strip().split(" | ")
    if fields[0] in sys.argv[1:]:
        found[fields[0]] = float(fields[-2].split(": ")[1])
print(found)
sys.exit(0 if found[sys.argv[2]] > found[sys.argv[1]] else 1)
PY
done
echo chain done
