#!/bin/bash
# A third seed of the release recipe (results/README.md, "A second seed of the release recipe, and mirror images"):
# make cpu-release's training with --seed 2, made a release as the bundled one is (mirror-averaged, 5% operating
# point), then scored beside the bundled release (seed 42) and seed 1's (runs/release-seed1, made by
# results/cpu-release-paste-dose-ab/chain.sh): the label audit's slices and grouped fold 0 source by source. Run from
# the repository root; run again after an interruption: the training resumes from its last epoch.
set -e
out=results/release-seeds run=runs/cpu-release-clean-seed2 release=runs/release-seed2
.venv/bin/python train.py --dataset data/all-sources-clean --output-dir $run --protocol grouped --folds 0 --epochs 60 \
    --image-size 128 --batch-size 128 --lr 2e-3 --paste-prob 0.3 --workers 1 --seed 2 --resume > $run.log 2>&1
cp $run/cv_results.json $out/seed2-cv_results.json; cp $run/log.jsonl $out/seed2-log.jsonl
.venv/bin/python make_release.py $run/fold-0 --output $release --healthy-false-alarms 0.05 --mirror-average \
    --report $out/release-seed2.json --workers 2 > $release.log 2>&1
PYTHONPATH=. .venv/bin/python results/label-audit/doubtful_notumor.py release runs/release-seed1 $release \
    --found-at data/all-sources-clean 2>&1 | grep -v "Loading weights" > $out/three-seeds-audited.txt
PYTHONPATH=. .venv/bin/python results/label-audit/held_out_by_source.py data/all-sources-clean 0 release \
    runs/release-seed1 $release 2>&1 | grep -v "Loading weights" > $out/three-seeds-held-out.txt
echo done
