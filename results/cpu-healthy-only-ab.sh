#!/bin/bash
# One change on the release's position towards Br35H, the GIN healthy-only A/B's way
# (results/cpu-gin-healthy-only-ab/README.md): the 4k rows plus sartaj's healthy slices, 96 px, 20 epochs. The
# seed-42 baseline's first epoch must replay the record's with this commit's code; then per seed, the baseline
# (--paste-prob 0.3; trained where missing) and the try (the FLAGs instead), both scored by found_at_false_alarms.py;
# a seed whose sartaj tumors found at 5% false alarms do not rise ends the A/B. Run from the repository root:
#   bash results/cpu-healthy-only-ab.sh NAME TRY FLAG [FLAG ...]
# records into results/cpu-NAME-ab/; the try's runs are runs/healthy-only-TRY-96 (-seed1).
name=$1 try_name=$2; shift 2
out=results/cpu-$name-ab
COMMON="--dataset data/all-sources --sources figshare,br35h,sartaj/notumor --protocol grouped --folds 0 --epochs 20 --image-size 96 --batch-size 64 --lr 1e-3 --workers 1"
bash results/replay-check.sh runs/check-$name-96 1.2773851855047818 $out/check-$name-96-log.jsonl $COMMON \
    --paste-prob 0.3 || exit 1
for seed in 42 1; do
  suffix=$([ $seed = 42 ] && echo "" || echo "-seed$seed")
  base=runs/healthy-only-paste-96$suffix try=runs/healthy-only-$try_name-96$suffix
  .venv/bin/python train.py $COMMON --paste-prob 0.3 --seed $seed --output-dir $base --resume > $base.log 2>&1
  .venv/bin/python train.py $COMMON "$@" --seed $seed --output-dir $try --resume > $try.log 2>&1
  for run in $base $try; do cp $run/cv_results.json $out/$(basename $run)-cv_results.json; cp $run/log.jsonl $out/$(basename $run)-log.jsonl; done
  PYTHONPATH=. .venv/bin/python results/gpu-4/found_at_false_alarms.py $base/fold-0 $try/fold-0 2>&1 \
      | grep -v "Loading weights" | tee -a $out/found-at-false-alarms.txt
  PYTHONPATH=. .venv/bin/python - $out/found-at-false-alarms.txt $base/fold-0 $try/fold-0 <<'PY' || { echo "not more found at 5%: the A/B ends"; break; }
import sys
scores, baseline, tried = sys.argv[1:]
found = {}
for line in open(scores):
    fields = line.strip().split(" | ")
    if fields[0] in (baseline, tried):
        found[fields[0]] = float(fields[-2].split(": ")[1])
print(found)
sys.exit(0 if found[tried] > found[baseline] else 1)
PY
done
echo chain done
