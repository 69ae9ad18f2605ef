"""The sixth lease's fold models at the release's operating point, from their held-out logits (held_out_logits.py):
for the improved model and ResNet34, each slice's own logits and the mean with its mirror image's (what a
`make_release.py --mirror-average` release classifies), as trained and at the operating point where 5% of healthy
slices are called a tumor. The point is fitted as make_release.py cross-fits it: each fold's held-out slices are
split into stratified halves with near-duplicate groups kept whole, the point fitted on one half scores the other
and the other way round, over CROSS_FIT_REPEATS random halvings; so no slice is scored by a point fitted on it.
In brackets, each share's 95% interval, near-duplicate groups resampled whole (metrics.share_interval).

    PYTHONPATH=. python results/gpu-6/operating_points.py data/all-sources-clean results/gpu-6/held-out-logits.json \
        [results/gpu-6/recipe-cross-validation.json]

The optional JSON file gets the release's way of classifying (the improved model, mirror-averaged, at 5%) with the
run's settings, for `make_release.py --recipe-cross-validation`, which checks that they are the release's recipe
and puts the figure beside the release's own (the Space shows both).
"""

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from brain_resnet.calibration import CROSS_FIT_REPEATS, cross_fitted_calls
from brain_resnet.data import load_table
from brain_resnet.metrics import share_interval

FALSE_ALARMS = 0.05
HERE = Path(__file__).parent

RELEASE_WAY = ("release-recipe-improved", "mirror-averaged")
dataset, logits_file = sys.argv[1], sys.argv[2]
recipe_file = Path(sys.argv[3]) if len(sys.argv) > 3 else None
report = json.loads(Path(logits_file).read_text())
table = load_table(dataset, "grouped", with_test=False)
if table.folds.tolist() != report["folds"] or table.labels.tolist() != report["labels"]:
    sys.exit(f"{dataset} is not the dataset the logits were written for (its folds or labels differ)")
labels, folds, sources = table.labels, table.folds, np.array(table.sources)
notumor = table.class_names.index("notumor")


def hits(calls: np.ndarray, rows: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For accuracy and the shares of tumors called a tumor and of healthy slices called healthy: the rows each
    counts and whether each of them is a hit."""
    truth, healthy = labels[rows], labels[rows] == notumor
    right, called_healthy = calls[rows] == truth, calls[rows] == notumor
    return {
        "accuracy": (rows, right),
        "tumors found": (rows[~healthy], ~called_healthy[~healthy]),
        "healthy called healthy": (rows[healthy], called_healthy[healthy]),
    }


def describe(name: str, calls_by_repeat: list[np.ndarray]) -> dict:
    """Mean over folds (± std) and, per source, the shares over every slice, averaged over the repeats, with the
    95% interval of each (metrics.share_interval: near-duplicate groups resampled whole). Returns the accuracy over
    every slice: its mean, its interval and the folds' means."""
    per_fold = [
        [hits(calls, np.flatnonzero(folds == fold))["accuracy"][1].mean() for fold in range(5)]
        for calls in calls_by_repeat
    ]
    fold_means = np.mean(per_fold, axis=0)
    folds_text = " ".join(f"{accuracy:.4f}" for accuracy in fold_means)
    print(f"{name:<44} accuracy {fold_means.mean():.4f} ± {fold_means.std(ddof=1):.4f} (folds {folds_text})")
    for source in ["all", *sorted(set(sources))]:
        rows = np.arange(len(labels)) if source == "all" else np.flatnonzero(sources == source)
        by_repeat = [hits(calls, rows) for calls in calls_by_repeat]
        shares = []
        for key, (counted, _) in by_repeat[0].items():
            if len(counted):
                share = np.mean([repeat[key][1] for repeat in by_repeat], axis=0)  # each slice's hits over repeats
                low, high = share_interval(share, table.groups[counted])
                of = "" if key == "accuracy" else f" of {len(counted)}"
                shares.append(f"{key} {share.mean():.4f}{of} ({low:.3f}–{high:.3f})")
                if source == "all" and key == "accuracy":
                    overall = {"accuracy": share.mean(), "interval": [low, high], "fold_accuracies": fold_means}
        print(f"    {source:<9} {len(rows):>5} slices: {', '.join(shares)}")
    return overall


for run, by_fold in report["runs"].items():
    plain, mirrored = np.zeros((len(labels), 4), np.float32), np.zeros((len(labels), 4), np.float32)
    for fold, logits in by_fold.items():
        rows = np.flatnonzero(folds == int(fold))
        plain[rows], mirrored[rows] = logits, report["mirrored_runs"][run][fold]
    for kind, logits in [("own", plain), ("mirror-averaged", (plain + mirrored) / 2)]:
        logits = torch.from_numpy(logits)
        describe(f"{run}, {kind}, as trained", [logits.argmax(dim=1).numpy()])
        at_point = []
        for seed in range(CROSS_FIT_REPEATS):
            calls = np.zeros(len(labels), int)
            for fold in range(5):
                rows = np.flatnonzero(folds == fold)
                fold_groups = table.groups[rows]
                calls[rows] = cross_fitted_calls(logits[rows], labels[rows], fold_groups, notumor, FALSE_ALARMS, seed)
            at_point.append(calls)
        overall = describe(f"{run}, {kind}, at {FALSE_ALARMS:.0%} (cross-fitted)", at_point)
        if recipe_file is not None and (Path(run).name, kind) == RELEASE_WAY:
            run_folder = HERE / "runs" / Path(run).name
            run_args = json.loads((run_folder / "run_args.json").read_text())
            recipe = {
                "command": shlex.join(["python", *sys.argv]),
                "run_command": run_args["command"],
                "settings": run_args["settings"],
                "device": json.loads((run_folder / "cv_results.json").read_text())["device"],
                "folds": len(by_fold),
                "healthy_false_alarms": FALSE_ALARMS,
                "mirror_average": kind == "mirror-averaged",
                "cross_fit_repeats": CROSS_FIT_REPEATS,
                "accuracy": round(float(overall["accuracy"]), 4),
                "interval": [round(float(bound), 4) for bound in overall["interval"]],
                "fold_accuracies": [round(float(accuracy), 4) for accuracy in overall["fold_accuracies"]],
            }
            recipe_file.write_text(json.dumps(recipe, indent=2) + "\n")
