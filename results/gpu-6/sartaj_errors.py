"""What the sixth lease's improved fold models get wrong on brain-tumor-mri-sartaj, each slice scored by the fold
model that did not train on it (mirror-averaged, at an operating point fitted on the whole held-out fold so that 5%
of its healthy slices are called a tumor): the scores per row and per distinct slice (a near-duplicate group
counted once), and every wrong group with its members, fold and labels.

    PYTHONPATH=. python results/gpu-6/sartaj_errors.py data/all-sources-clean results/gpu-6/held-out-logits.json
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

from brain_resnet.calibration import notumor_offset
from brain_resnet.data import load_table, read_splits

dataset, logits_file = sys.argv[1], sys.argv[2]
report = json.loads(Path(logits_file).read_text())
table = load_table(dataset, "grouped", with_test=False)
if table.folds.tolist() != report["folds"] or table.labels.tolist() != report["labels"]:
    sys.exit(f"{dataset} is not the dataset the logits were written for (its folds or labels differ)")
files = np.array([name.rsplit("/", 1)[-1] for name in read_splits(dataset)[0]["train"]["file"]])
labels, folds, groups = table.labels, table.folds, table.groups
sources, notumor = np.array(table.sources), table.class_names.index("notumor")
run = next(name for name in report["runs"] if name.endswith("improved"))

calls = np.zeros(len(labels), int)
for fold, logits in report["runs"][run].items():
    rows = np.flatnonzero(folds == int(fold))
    averaged = torch.from_numpy((np.array(logits, np.float32) + np.array(report["mirrored_runs"][run][fold])) / 2)
    averaged[:, notumor] += notumor_offset(averaged, labels[rows], notumor, 0.05)
    calls[rows] = averaged.argmax(dim=1).numpy()

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
