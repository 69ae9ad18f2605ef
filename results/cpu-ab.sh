#!/bin/bash
# One switch against the source shortcut, the dark-lesion A/B's way (results/cpu-dark-lesion-ab/README.md): the
# seed-42 baseline's first epoch must replay the record's with this commit's code and the switch off, then the switch
# with seeds 42 and 1 against that A/B's baselines (runs/ab-paste-mirror-96, -seed1), each scored as soon as it ends
# by the record's scripts (sartaj 4-class by evaluation.py external, AUROC and ROC points, found at false alarms on
# held-out Br35H); a seed whose sartaj AUROC falls ends the A/B. Run from the repository root:
#   bash results/cpu-ab.sh NAME FLAG [FLAG ...]     (records into results/cpu-NAME-ab/; runs named by NAME)
name=$1; shift
out=results/cpu-$name-ab
COMMON="--dataset data/all-sources --sources figshare,br35h --protocol grouped --folds 0 --epochs 20 --image-size 96 --batch-size 64 --lr 1e-3 --paste-prob 0.3 --mirror-prob 0.5 --workers 1"
bash results/replay-check.sh runs/check-$name-96 1.3181263438442297 $out/check-$name-96-log.jsonl $COMMON || exit 1
for seed in 42 1; do
  suffix=$([ $seed = 42 ] && echo "" || echo "-seed$seed")
  label=$([ -z "$suffix" ] && echo seed42 || echo "${suffix#-}")
  base=runs/ab-paste-mirror-96$suffix/fold-0 try=runs/ab-$name-paste-mirror-96$suffix
  .venv/bin/python train.py $COMMON "$@" --seed $seed --output-dir $try --resume > $try.log 2>&1
  .venv/bin/python evaluation.py external ../shared/data/brain-tumor-mri-sartaj --model $base --model $try/fold-0 \
      --output $out/external-sartaj-$label.json > runs/$name-external-$label.log 2>&1
  {
    echo "# the same, given $try/fold-0 $base"
    PYTHONPATH=. .venv/bin/python results/cpu-heal-ab/sartaj_roc_points.py $try/fold-0 $base
    PYTHONPATH=. .venv/bin/python results/gpu-4/found_at_false_alarms.py $try/fold-0 $base
  } 2>&1 | grep -v "Loading weights" >> $out/sartaj-scores.txt
  .venv/bin/python results/auroc_rose.py $out/sartaj-scores.txt $try/fold-0 $base || { echo "AUROC fell: the A/B ends"; break; }
done
echo chain done
