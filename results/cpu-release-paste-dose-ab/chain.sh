#!/bin/bash
# Twice the pasted lesions in the release recipe itself (README.md here, its rule fixed before the runs). The seed-42
# baseline's first epoch must replay runs/cpu-release-clean's with this commit's code; the seed-1 baseline is made a
# mirror-averaged release as the bundled one is; then per seed the recipe with --paste-prob 0.6 is trained, made a
# release and scored. A seed whose audited Br35H tumors called a tumor do not rise ends the A/B. Run from the
# repository root; records into results/cpu-release-paste-dose-ab/. Run again after an interruption: the replay is
# checked again, unfinished training resumes from its last epoch, and seeds already scored are not scored again.
set -e
out=results/cpu-release-paste-dose-ab
RECIPE="--dataset data/all-sources-clean --protocol grouped --folds 0 --model improved --epochs 60 --image-size 128 --batch-size 128 --lr 2e-3 --workers 1"
RELEASE="--healthy-false-alarms 0.05 --mirror-average --workers 2"
bash results/replay-check.sh runs/check-release-128 1.3143178304036458 $out/check-release-128-log.jsonl $RECIPE \
    --paste-prob 0.3
[ -d runs/release-seed1 ] || .venv/bin/python make_release.py runs/cpu-release-clean-seed1/fold-0 --output runs/release-seed1 \
    $RELEASE --report $out/release-seed1.json > runs/release-seed1.log 2>&1
for seed in 42 1; do
  suffix=$([ $seed = 42 ] && echo "" || echo "-seed$seed")
  base=$([ $seed = 42 ] && echo release || echo runs/release-seed1)
  run=runs/cpu-release-paste06$suffix try=runs/release-paste06$suffix
  .venv/bin/python train.py $RECIPE --paste-prob 0.6 --seed $seed --output-dir $run --resume > $run.log 2>&1
  cp $run/cv_results.json $out/$(basename $run)-cv_results.json; cp $run/log.jsonl $out/$(basename $run)-log.jsonl
  if ! grep -q "^$try: " $out/audited-slices.txt 2>/dev/null; then  # a rerun resumes: scored seeds are not redone
    .venv/bin/python make_release.py $run/fold-0 --output $try $RELEASE --report $out/$(basename $try).json > $try.log 2>&1
    PYTHONPATH=. .venv/bin/python results/label-audit/doubtful_notumor.py $base $try --found-at data/all-sources-clean \
        2>&1 | grep -v "Loading weights" | tee -a $out/audited-slices.txt
    PYTHONPATH=. .venv/bin/python results/label-audit/held_out_by_source.py data/all-sources-clean 0 $base $try \
        2>&1 | grep -v "Loading weights" | tee -a $out/held-out-by-source.txt
  fi
  PYTHONPATH=. .venv/bin/python - $out/audited-slices.txt $base $try <<'PY' || { echo "no more audited Br35H tumors found: the A/B ends"; break; }
import re, sys
scores, baseline, tried = sys.argv[1:]
called, model = {}, None
for line in open(scores):
    if match := re.match(r"(\S+): \d+ of 85 called a tumor", line):
        model = match[1]
        called[model] = 0
    elif match := re.match(r"  (\d+) of \d+: Br35H:", line):
        called[model] += int(match[1])
print("audited Br35H tumors called a tumor:", called)
sys.exit(0 if called[tried] > called[baseline] else 1)
PY
done
echo chain done
