"""The sixth lease's fold models on brain-tumor-mri-sartaj by the published set's folder (Training or Testing) and
class, each slice scored by the fold model that did not train on it (mirror-averaged, operating point fitted on the
whole held-out fold so that 5% of its healthy slices are called a tumor, as sartaj_errors.py), and each wrong
Testing-folder glioma with the labels and calls of its near-duplicates.

    PYTHONPATH=. python results/gpu-6/sartaj_by_folder.py data/all-sources-clean results/gpu-6/held-out-logits.json
"""

import sys

import numpy as np
from held_out import calls_at_operating_point, load

report, table, files = load(sys.argv[1], sys.argv[2])
labels, groups, names = table.labels, table.groups, table.class_names
sartaj = np.array(table.sources) == "sartaj"
folder = np.array([name.split("-")[1] if from_sartaj else "" for name, from_sartaj in zip(files, sartaj, strict=True)])
glioma = names.index("glioma")

for run in report["runs"]:
    calls = calls_at_operating_point(report, table, run)
    print(f"{run}: sartaj slices called their label, by folder of the published set")
    for label, name in enumerate(names):
        counts = []
        for part in ("Tr", "Te"):
            rows = sartaj & (labels == label) & (folder == part)
            counts.append(f"{'Training' if part == 'Tr' else 'Testing'} {(calls[rows] == label).sum()}/{rows.sum()}")
        print(f"  {name:<11} " + ", ".join(counts))
    if run.endswith("improved"):
        print("  Testing-folder gliomas called otherwise, with their near-duplicates [label -> call]:")
        for row in np.flatnonzero(sartaj & (folder == "Te") & (labels == glioma) & (calls != glioma)):
            copies = [other for other in np.flatnonzero(groups == groups[row]) if other != row]
            named = ", ".join(f"{files[c]} [{names[labels[c]]} -> {names[calls[c]]}]" for c in copies) or "none"
            print(f"    {files[row]} -> {names[calls[row]]}; copies: {named}")
