"""The seventh lease's test of --untyped-tumors, scored from the fold models' logits (row_logits.py) by the rule
fixed in results/gpu-7/README.md before the run:

    PYTHONPATH=. python results/gpu-7/untyped_cv.py results/gpu-7/row-logits-seed42.json.gz [more seeds' files]

(row_logits.py writes plain JSON; the lease's files are kept gzipped, 8.4 MB → 1.3 MB each, so that the tracked tree
and data/all-sources still fit a lease's 64 MiB.)

For each seed, arm and fold k: fold k's model sets its operating point on its held-out fold's healthy slices (the
audited ones left out), at 1%, 5% and 10% of them called a tumor, and scores there the Br35H patient that
lists/exclude-fold-K.txt names (never seen by that model in either arm), its held-out fold and the fold's sartaj
slices. Both arms must have the same folds' models, or the comparison would be of different patients. Primary: the
mean of each slice's logits and its mirror image's (as the release classifies) at 5%.
"""

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import torch

from brain_resnet.calibration import notumor_offset
from brain_resnet.folds import read_exclusions

HERE = Path(__file__).parent
AUDIT = HERE.parent / "label-audit" / "doubtful-notumor.txt"
FALSE_ALARMS = (0.01, 0.05, 0.10)
PRIMARY = 0.05


def patient_files(fold: int) -> set[str]:
    """The audited slices of the Br35H patient that fold's model scores: the Br35H rows of its exclusion list."""
    return {name for name in read_exclusions(HERE / "lists" / f"exclude-fold-{fold}.txt") if "/br35h-" in name}


def arm_scores(report: dict, models: dict[int, list], audited: np.ndarray) -> dict:
    """{false alarms: {found, patients' slices, held-out correct, held-out slices, sartaj tumors found, ...}}."""
    files, labels = np.array(report["files"]), np.array(report["labels"])
    sources, folds = np.array(report["sources"]), np.array(report["folds"])
    notumor = report["class_names"].index("notumor")
    counts = ("found", "patient_slices", "correct", "correct_as_trained", "held_out", "sartaj_found", "sartaj_tumors")
    totals = {rate: dict.fromkeys(counts, 0) for rate in FALSE_ALARMS}
    for fold, logits in sorted(models.items()):
        logits = torch.tensor(logits)
        held_out = (folds == fold) & ~audited
        patient = np.isin(files, list(patient_files(fold)))
        sartaj_tumors = held_out & (sources == "sartaj") & (labels != notumor)
        as_trained = logits.argmax(dim=1).numpy()
        for rate in FALSE_ALARMS:
            shifted = logits.clone()
            shifted[:, notumor] += notumor_offset(logits[held_out], labels[held_out], notumor, rate)
            calls = shifted.argmax(dim=1).numpy()
            total = totals[rate]
            total["found"] += int(np.sum(calls[patient] != notumor))
            total["patient_slices"] += int(patient.sum())
            total["correct"] += int(np.sum(calls[held_out] == labels[held_out]))
            total["correct_as_trained"] += int(np.sum(as_trained[held_out] == labels[held_out]))
            total["held_out"] += int(held_out.sum())
            total["sartaj_found"] += int(np.sum(calls[sartaj_tumors] != notumor))
            total["sartaj_tumors"] += int(sartaj_tumors.sum())
    return totals


def models_of(report: dict, arm: str, mirror: bool) -> dict[int, np.ndarray]:
    """{fold: logits} of one arm: the control's run folder, or the untyped arm's one folder per fold."""
    chosen = {}
    for run, by_fold in report["runs"].items():
        if Path(run).name.startswith(f"{arm}-"):
            for fold, logits in by_fold.items():
                plain = np.array(logits, np.float32)
                mirrored = np.array(report["mirrored"][run][fold], np.float32)
                chosen[int(fold)] = (plain + mirrored) / 2 if mirror else plain
    return chosen


def main() -> None:
    audit = set(read_exclusions(AUDIT))
    primary = {"control": [], "untyped": []}
    for path in sys.argv[1:]:
        raw = Path(path).read_bytes()
        report = json.loads(gzip.decompress(raw) if path.endswith(".gz") else raw)
        audited = np.isin(report["files"], list(audit))
        for mirror in (True, False):
            arms = {arm: models_of(report, arm, mirror) for arm in primary}
            if arms["control"].keys() != arms["untyped"].keys() or not arms["control"]:
                sys.exit(
                    f"{path}: the arms have models of different folds (control {sorted(arms['control'])}, untyped "
                    f"{sorted(arms['untyped'])}); a fold whose training was cut short saved none"
                )
            print(
                f"\n{path}: {'mirror-averaged (primary)' if mirror else 'own logits'}, folds {sorted(arms['control'])}"
            )
            print(
                f"{'arm':<9}{'false alarms':>13}{'patients found':>16}{'held-out acc.':>15}{'as trained':>12}"
                f"{'sartaj tumors found':>21}"
            )
            for arm, models in arms.items():
                for rate, t in arm_scores(report, models, audited).items():
                    print(
                        f"{arm:<9}{rate:>13.0%}{t['found']:>10} of {t['patient_slices']:<3}"
                        f"{t['correct'] / t['held_out']:>15.4f}{t['correct_as_trained'] / t['held_out']:>12.4f}"
                        f"{t['sartaj_found']:>14} of {t['sartaj_tumors']:<3}"
                    )
                    if mirror and rate == PRIMARY:
                        primary[arm].append(t)
    pairs = list(zip(primary["control"], primary["untyped"], strict=True))
    if not pairs:
        sys.exit("give at least one seed's row logits")
    gains = [u["found"] - c["found"] for c, u in pairs]
    accuracy = [u["correct"] / u["held_out"] - c["correct"] / c["held_out"] for c, u in pairs]
    sartaj = [u["sartaj_found"] / u["sartaj_tumors"] - c["sartaj_found"] / c["sartaj_tumors"] for c, u in pairs]
    rule = {
        "mean gain of patients' slices found >= 8": np.mean(gains) >= 8,
        "a gain in every seed": min(gains) > 0,
        "held-out accuracy at most 0.5 points lower": np.mean(accuracy) >= -0.005,
        "sartaj tumors found at most 1 point lower": np.mean(sartaj) >= -0.01,
    }
    print(
        f"\nThe rule at {PRIMARY:.0%}, mirror-averaged, over {len(pairs)} seed(s): gains {gains} slices, held-out "
        f"accuracy {', '.join(f'{a * 100:+.2f}' for a in accuracy)} points, sartaj tumors found "
        f"{', '.join(f'{s * 100:+.2f}' for s in sartaj)} points"
    )
    for condition, met in rule.items():
        print(f"  {'met    ' if met else 'NOT met'}  {condition}")
    print("adopted" if all(rule.values()) else "not adopted")


main()
