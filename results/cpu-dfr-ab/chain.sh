#!/bin/bash
# Last-layer retraining A/B (README.md here): each baseline's head refitted by refit_head.py, then both heads scored
# on sartaj by the record's scripts. Run from the repository root: bash results/cpu-dfr-ab/chain.sh
out=results/cpu-dfr-ab
for seed in 42 1; do
  suffix=$([ $seed = 42 ] && echo "" || echo "-seed$seed")
  label=$([ -z "$suffix" ] && echo seed42 || echo "${suffix#-}")
  base=runs/ab-paste-mirror-96$suffix/fold-0 try=runs/ab-dfr-paste-mirror-96$suffix
  PYTHONPATH=. .venv/bin/python $out/refit_head.py $base $try 2>&1 | grep -v "Loading weights\|Writing model shards" > $out/refit-$label.txt
  .venv/bin/python evaluation.py external ../shared/data/brain-tumor-mri-sartaj --model $base --model $try \
      --output $out/external-sartaj-$label.json > runs/dfr-external-$label.log 2>&1
  {
    echo "# the same, given $try $base"
    PYTHONPATH=. .venv/bin/python results/cpu-heal-ab/sartaj_roc_points.py $try $base
    PYTHONPATH=. .venv/bin/python results/gpu-4/found_at_false_alarms.py $try $base
  } 2>&1 | grep -v "Loading weights" >> $out/sartaj-scores.txt
done
echo chain done
