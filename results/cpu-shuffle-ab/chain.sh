#!/bin/bash
# Shuffled-quadrants A/B (results/cpu-shuffle-ab/README.md, its rule fixed before the runs). From the repository root.
# Each seed: the baseline and the try trained side by side (one thread each), then both scored; a seed whose sartaj
# AUROC falls ends the A/B.
out=results/cpu-shuffle-ab
[ -d /tmp/ds4k ] || .venv/bin/python prepare_dataset.py ../shared/data/brain-tumor-mri-4k /tmp/ds4k  # for the copies
COMMON="--dataset data/all-sources --sources figshare,br35h --protocol grouped --folds 0 --epochs 20 --image-size 96 --batch-size 64 --lr 1e-3 --paste-prob 0.3 --mirror-prob 0.5 --workers 1"
for seed in 42 1; do
  suffix=$([ $seed = 42 ] && echo "" || echo "-seed$seed")
  label=$([ -z "$suffix" ] && echo seed42 || echo "${suffix#-}")
  base=runs/ab-base-paste-mirror-96$suffix try=runs/ab-shuffle-paste-mirror-96$suffix
  OMP_NUM_THREADS=1 .venv/bin/python train.py $COMMON --seed $seed --output-dir $base --resume > $base.log 2>&1 &
  OMP_NUM_THREADS=1 .venv/bin/python train.py $COMMON --shuffle-prob 0.3 --seed $seed --output-dir $try --resume \
      > $try.log 2>&1
  wait
  for run in $base $try; do cp $run/cv_results.json $out/$(basename $run)-cv_results.json; done
  .venv/bin/python evaluation.py external ../shared/data/brain-tumor-mri-sartaj --model $base/fold-0 \
      --model $try/fold-0 --output $out/external-sartaj-$label.json > runs/shuffle-external-$label.log 2>&1
  .venv/bin/python evaluation.py external ../shared/data/brain-tumor-mri-sartaj --model $base/fold-0 \
      --model $try/fold-0 --leave-out-copies-of /tmp/ds4k \
      --output $out/external-sartaj-less-copies-$label.json >> runs/shuffle-external-$label.log 2>&1
  {
    echo "# $label: the try, then the baseline"
    PYTHONPATH=. .venv/bin/python results/cpu-heal-ab/sartaj_roc_points.py $try/fold-0 $base/fold-0
    PYTHONPATH=. .venv/bin/python results/gpu-4/found_at_false_alarms.py $try/fold-0 $base/fold-0
  } 2>&1 | grep -v "Loading weights" >> $out/sartaj-scores.txt
  .venv/bin/python results/auroc_rose.py $out/sartaj-scores.txt $try/fold-0 $base/fold-0 || { echo "AUROC fell: the A/B ends"; break; }
done
echo chain done
