#!/bin/bash
# Score one seed's pair (SUFFIX: "" or -seed1) by the record's scripts, from the repository root: sartaj 4-class by
# evaluation.py external, AUROC and ROC points, found at false alarms on held-out Br35H.
suffix=$1
base=runs/ab-paste-mirror-96$suffix/fold-0 try=runs/ab-gin-paste-mirror-96$suffix/fold-0
name=$([ -z "$suffix" ] && echo seed42 || echo "${suffix#-}")
.venv/bin/python evaluation.py external ../shared/data/brain-tumor-mri-sartaj --model $base --model $try \
    --output results/cpu-gin-ab/external-sartaj-$name.json > runs/gin-external-$name.log 2>&1
{
  echo "# the same, given $try $base"
  PYTHONPATH=. .venv/bin/python results/cpu-heal-ab/sartaj_roc_points.py $try $base
  PYTHONPATH=. .venv/bin/python results/gpu-4/found_at_false_alarms.py $try $base
} 2>&1 | grep -v "Loading weights" >> results/cpu-gin-ab/sartaj-scores.txt
