"""Exit 0 if the try's sartaj AUROC is above the baseline's in SCORES (sartaj_roc_points.py lines appended by an A/B
chain), else 1; prints both. The A/B chains' stopping rule: a seed whose AUROC falls ends the A/B.
    python results/auroc_rose.py SCORES TRY_MODEL BASELINE_MODEL"""

import sys

scores, tried, baseline = sys.argv[1:]
aurocs = {}
for line in open(scores):
    fields = line.split(" | ")
    if len(fields) > 1 and fields[1].startswith("AUROC"):
        aurocs[fields[0]] = float(fields[1].split()[1])
print(aurocs[tried], aurocs[baseline])
sys.exit(0 if aurocs[tried] > aurocs[baseline] else 1)
