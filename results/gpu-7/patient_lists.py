"""The lists of the seventh lease's test of --untyped-tumors, from the label audit's list and the dataset's folds
(written once, committed):

    PYTHONPATH=. python results/gpu-7/patient_lists.py results/label-audit/doubtful-notumor.txt data/all-sources \
        results/gpu-7/lists

The audit's Br35H slices are copies of five patients, one section of the list each. Each patient is scored by one
grouped fold's model, which never sees that patient's slices or sartaj's audited ones (exclude-fold-K.txt) and
trains on the other four patients' slices as tumors of unknown type (untyped-fold-K.txt), those outside its
held-out fold. Which fold's model scores which patient is chosen so that every model trains on as many of the
other patients' slices as it can: the largest smallest count, then the largest total.
"""

import itertools
import sys
from pathlib import Path

import numpy as np

from brain_resnet.data import load_table, read_splits

audit, dataset, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
patients, sartaj, heading = [], [], ""
for line in audit.read_text(encoding="utf-8").splitlines():
    name = line.partition("#")[0].strip()
    if not name:
        if line.startswith("# "):
            heading = line
        continue
    if heading.startswith("# Br35H"):
        if not patients or patients[-1][0] != heading:
            patients.append((heading, []))
        patients[-1][1].append(name)
    else:
        sartaj.append(name)
if len(patients) != 5:
    sys.exit(f"{audit}: expected five Br35H patients' sections, found {len(patients)}")
table = load_table(dataset, "grouped", with_test=False)
fold_of = dict(zip(read_splits(dataset)[0]["train"]["file"], table.folds.tolist(), strict=True))


def trained(fold: int, patient: int) -> int:
    """The other patients' slices that fold's model trains on: those outside its held-out fold."""
    return sum(fold_of[f] != fold for other, (_, files) in enumerate(patients) if other != patient for f in files)


def counts(folds: tuple[int, ...]) -> list[int]:
    return [trained(fold, patient) for patient, fold in enumerate(folds)]


pairing = max(itertools.permutations(range(5)), key=lambda folds: (min(counts(folds)), sum(counts(folds))))
out.mkdir(parents=True, exist_ok=True)
source = f"# Made by results/gpu-7/patient_lists.py from {audit} and the folds of {dataset}"
for patient, fold in enumerate(pairing):
    heading, files = patients[patient]
    others = [f"{h}\n" + "\n".join(f) for j, (h, f) in enumerate(patients) if j != patient]
    (out / f"untyped-fold-{fold}.txt").write_text(
        f"{source}: the Br35H patients other than the one fold {fold}'s model scores\n\n" + "\n\n".join(others) + "\n"
    )
    (out / f"exclude-fold-{fold}.txt").write_text(
        f"{source}: the Br35H patient fold {fold}'s model scores, and sartaj's audited slices\n\n"
        f"{heading}\n" + "\n".join(files) + "\n\n# sartaj\n" + "\n".join(sartaj) + "\n"
    )
    folds_held = np.bincount([fold_of[f] for f in files], minlength=5).tolist()
    print(
        f"patient {patient} ({len(files)} slices, by fold {folds_held}) scored by fold {fold}'s model, which trains on "
        f"{trained(fold, patient)} untyped slices: {heading[2:80]}"
    )
print(f"sartaj: {len(sartaj)} slices, left out of every untyped model")
