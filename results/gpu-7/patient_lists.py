"""The lists of the seventh lease's test of --untyped-tumors, from the label audit's list (written once, committed):

    python results/gpu-7/patient_lists.py results/label-audit/doubtful-notumor.txt results/gpu-7/lists

The audit's Br35H slices are copies of five patients, one section of the list each. Fold k's model of the untyped
arm trains on the other four patients' slices as tumors of unknown type (untyped-fold-K.txt) and never sees patient
k's slices or sartaj's audited ones (exclude-fold-K.txt), so that patient k is scored by a model that saw none of
their copies; the control arm leaves out every audited slice, as the release does.
"""

import sys
from pathlib import Path

audit, out = Path(sys.argv[1]), Path(sys.argv[2])
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
out.mkdir(parents=True, exist_ok=True)
source = f"# Made by results/gpu-7/patient_lists.py from {audit}"
for k, (heading, files) in enumerate(patients):
    others = [f"{h}\n" + "\n".join(f) for j, (h, f) in enumerate(patients) if j != k]
    (out / f"untyped-fold-{k}.txt").write_text(
        f"{source}: the other four Br35H patients\n\n" + "\n\n".join(others) + "\n"
    )
    (out / f"exclude-fold-{k}.txt").write_text(
        f"{source}: Br35H patient {k}, scored by fold {k}'s model, and sartaj's audited slices\n\n"
        f"{heading}\n" + "\n".join(files) + "\n\n# sartaj\n" + "\n".join(sartaj) + "\n"
    )
    print(f"patient {k}: {len(files)} slices, {heading[2:90]}")
print(f"sartaj: {len(sartaj)} slices")
