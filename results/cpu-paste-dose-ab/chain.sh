#!/bin/bash
# Twice the pasted lesions on the release's position towards Br35H (results/cpu-paste-dose-ab/README.md, its rule
# fixed before the runs): the seed-42 baseline's first epoch must replay, then per seed the baseline (--paste-prob
# 0.3, trained where missing) and --paste-prob 0.6, both scored by found_at_false_alarms.py; a seed whose tumors
# found at 5% false alarms do not rise ends the A/B. Run from the repository root.
COMMON="--dataset data/all-sources --sources figshare,br35h,sartaj/notumor --protocol grouped --folds 0 --epochs 20 --image-size 96 --batch-size 64 --lr 1e-3 --workers 1"
out=results/cpu-paste-dose-ab
check=runs/check-paste-dose-96
rm -rf $check
.venv/bin/python train.py $COMMON --paste-prob 0.3 --output-dir $check > $check.log 2>&1 &
pid=$!
while [ ! -s $check/log.jsonl ] && kill -0 $pid 2>/dev/null; do sleep 5; done
kill $pid; wait $pid
grep -q '"train_loss": 1.2773851855047818,' $check/log.jsonl || { echo "baseline does not replay"; exit 1; }
cp $check/log.jsonl $out/check-paste-dose-96-log.jsonl
echo "baseline replays"
for seed in 42 1; do
  suffix=$([ $seed = 42 ] && echo "" || echo "-seed$seed")
  base=runs/healthy-only-paste-96$suffix try=runs/healthy-only-paste06-96$suffix
  .venv/bin/python train.py $COMMON --paste-prob 0.3 --seed $seed --output-dir $base --resume > $base.log 2>&1
  .venv/bin/python train.py $COMMON --paste-prob 0.6 --seed $seed --output-dir $try --resume > $try.log 2>&1
  for run in $base $try; do cp $run/cv_results.json $out/$(basename $run)-cv_results.json; cp $run/log.jsonl $out/$(basename $run)-log.jsonl; done
  PYTHONPATH=. .venv/bin/python results/gpu-4/found_at_false_alarms.py $base/fold-0 $try/fold-0 2>&1 \
      | grep -v "Loading weights" | tee -a $out/found-at-false-alarms.txt
  PYTHONPATH=. .venv/bin/python - $base/fold-0 $try/fold-0 <<'PY' || { echo "not more found at 5%: the A/B ends"; break; }
import sys
found = {}
for line in open("results/cpu-paste-dose-ab/found-at-false-alarms.txt"):
    fields = line.strip().split(" | ")
    if fields[0] in sys.argv[1:]:
        found[fields[0]] = float(fields[-2].split(": ")[1])
print(found)
sys.exit(0 if found[sys.argv[2]] > found[sys.argv[1]] else 1)
PY
done
echo chain done
