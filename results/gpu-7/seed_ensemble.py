"""Would averaging several seeds' models find more of the tumors the release misses? From the seventh lease's
control arm (the release recipe, three seeds, every audited slice left out of training):

    PYTHONPATH=. python results/gpu-7/seed_ensemble.py results/gpu-7/row-logits-seed{42,1,2}.json.gz

For each fold k, each seed's model alone and the mean of the seeds' logits (each mirror-averaged, as the release
classifies) set their operating point on fold k's healthy slices (audited ones left out) so that 5% of them are
called a tumor, as untyped_cv.py does, and are scored there on fold k (4-class accuracy), its sartaj slices (4-class
accuracy, tumors found) and all 77 audited Br35H slices, which no control model trained on.
"""

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import torch

from brain_resnet.calibration import notumor_offset
from brain_resnet.folds import read_exclusions

AUDIT = Path(__file__).parent.parent / "label-audit" / "doubtful-notumor.txt"
FALSE_ALARMS = 0.05


def control_logits(path: str) -> tuple[dict, dict[int, np.ndarray]]:
    """The report and {fold: mirror-averaged logits on every row} of one seed's control arm."""
    report = json.loads(gzip.decompress(Path(path).read_bytes()))
    (run,) = [run for run in report["runs"] if Path(run).name.startswith("control-")]
    return report, {
        int(fold): (np.array(plain, np.float32) + np.array(report["mirrored"][run][fold], np.float32)) / 2
        for fold, plain in report["runs"][run].items()
    }


def scores(logits: np.ndarray, report: dict, fold: int, audited: np.ndarray) -> dict[str, int]:
    """Counts at the operating point fitted on the fold's healthy slices."""
    labels, sources = np.array(report["labels"]), np.array(report["sources"])
    notumor = report["class_names"].index("notumor")
    held_out = (np.array(report["folds"]) == fold) & ~audited
    sartaj = held_out & (sources == "sartaj")
    shifted = torch.tensor(logits)
    shifted[:, notumor] += notumor_offset(shifted[held_out], labels[held_out], notumor, FALSE_ALARMS)
    calls = shifted.argmax(dim=1).numpy()
    brain_br35h = audited & (sources == "br35h")
    return {
        "held_out": int(held_out.sum()),
        "correct": int(np.sum(calls[held_out] == labels[held_out])),
        "sartaj": int(sartaj.sum()),
        "sartaj_correct": int(np.sum(calls[sartaj] == labels[sartaj])),
        "sartaj_tumors": int(np.sum(sartaj & (labels != notumor))),
        "sartaj_found": int(np.sum(calls[sartaj & (labels != notumor)] != notumor)),
        "audited": int(brain_br35h.sum()),
        "audited_found": int(np.sum(calls[brain_br35h] != notumor)),
    }


def line(name: str, counts: list[dict[str, int]]) -> str:
    """One row: the counts summed over the folds."""
    total = {key: sum(c[key] for c in counts) for key in counts[0]}
    return (
        f"{name:<22}{total['correct'] / total['held_out']:>10.4f}{total['sartaj_correct'] / total['sartaj']:>10.4f}"
        f"{total['sartaj_found']:>8} of {total['sartaj_tumors']:<5}{total['audited_found'] / len(counts):>9.1f} of "
        f"{total['audited'] // len(counts)}"
    )


def main() -> None:
    seeds = [control_logits(path) for path in sys.argv[1:]]
    if len(seeds) < 2:
        sys.exit("give at least two seeds' row logits")
    report = seeds[0][0]
    if any(other["files"] != report["files"] for other, _ in seeds):
        sys.exit("the seeds' files list different rows")
    audited = np.isin(report["files"], list(read_exclusions(AUDIT)))
    folds = sorted(seeds[0][1])
    print(f"5% of each fold's healthy slices called a tumor, mirror-averaged, folds {folds}, summed over the folds")
    print(f"{'model':<22}{'fold acc.':>10}{'sartaj':>10}{'sartaj tumors':>16}{'Br35H audited':>17} (mean per fold)")
    for path, (_, by_fold) in zip(sys.argv[1:], seeds, strict=True):
        print(line(Path(path).name.split(".")[0], [scores(by_fold[k], report, k, audited) for k in folds]))
    ensemble = [scores(np.mean([by_fold[k] for _, by_fold in seeds], axis=0), report, k, audited) for k in folds]
    print(line(f"mean of {len(seeds)} seeds' logits", ensemble))


main()
