"""What the sixth lease's improved fold models get wrong on brain-tumor-mri-sartaj, each slice scored by the fold
model that did not train on it (mirror-averaged, at an operating point fitted on the whole held-out fold so that 5%
of its healthy slices are called a tumor): the scores per row and per distinct slice (a near-duplicate group
counted once), and every wrong group with its members, fold and labels.

    PYTHONPATH=. python results/gpu-6/sartaj_errors.py data/all-sources-clean results/gpu-6/held-out-logits.json
"""

import sys

import numpy as np
from held_out import calls_at_operating_point, load

report, table, files = load(sys.argv[1], sys.argv[2])
labels, folds, groups = table.labels, table.folds, table.groups
sources, notumor = np.array(table.sources), table.class_names.index("notumor")
run = next(name for name in report["runs"] if name.endswith("improved"))
calls = calls_at_operating_point(report, table, run)

sartaj = sources == "sartaj"
weight = np.zeros(len(labels))  # each distinct slice (near-duplicate group) counts once
for group in np.unique(groups[sartaj]):
    members = sartaj & (groups == group)
    weight[members] = 1 / members.sum()
tumors, healthy = sartaj & (labels != notumor), sartaj & (labels == notumor)
print(f"{run}: sartaj, {sartaj.sum()} rows, {len(np.unique(groups[sartaj]))} distinct slices")
for name, rows, hit in [
    ("4-class accuracy", sartaj, calls == labels),
    ("tumors found", tumors, calls != notumor),
    ("healthy called healthy", healthy, calls == notumor),
]:
    per_row, per_slice = hit[rows].mean(), (weight[rows] * hit[rows]).sum() / weight[rows].sum()
    print(f"  {name:<24} per row {per_row:.4f} ({rows.sum()} rows), per distinct slice {per_slice:.4f}")
for title, wrong in [
    ("healthy slices called a tumor", healthy & (calls != notumor)),
    ("tumors called healthy", tumors & (calls == notumor)),
]:
    print(f"\n{title}: {wrong.sum()} rows in {len(np.unique(groups[wrong]))} distinct slices")
    for group in np.unique(groups[wrong]):
        members = np.flatnonzero(sartaj & (groups == group))
        named = ", ".join(
            f"{files[m]} ({table.class_names[labels[m]]} -> {table.class_names[calls[m]]})" for m in members
        )
        print(f"  fold {folds[members[0]]}: {named}")
