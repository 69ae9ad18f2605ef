"""Released models of one recipe side by side on grouped fold 0 (the fold they never trained on), each alone and
with its mirror image averaged in, and all of them averaged: how far a second seed moves the release's figures, and
what a left-right flip or an ensemble would add.

    python results/release-seeds/compare_releases.py data/all-sources-clean release /tmp/release-seed1 \
        [--listed results/untyped-ab/held-out.txt]

Each MODEL is a make_release.py folder: its temperature and operating point (the notumor offset) are in its weights
and were fitted on this same fold, so the top-class columns are in-sample for those two numbers (make_release's
report cross-fits them); a model made with --mirror-average averages already (the outputs recorded beside this
script were made before the release had it, commit fc9939f^). The last columns rank slices by P(notumor) instead: the
Br35H slices of --listed (default: results/label-audit/doubtful-notumor.txt, the 77 tumors labelled healthy, left out
of data/all-sources-clean) found where 1%, 5% and 10% of the fold's healthy slices are called a tumor, a diagnostic
only (they are a test set).
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from brain_resnet.data import decode_images, load_table
from brain_resnet.engine import model_input
from brain_resnet.folds import read_exclusions
from brain_resnet.modeling import BrainResNetForImageClassification, BrainResNetImageProcessor

AUDIT = Path(__file__).parents[1] / "label-audit" / "doubtful-notumor.txt"
SHARED = Path("../shared/data")

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("dataset")
parser.add_argument("models", nargs="+", metavar="MODEL")
parser.add_argument("--listed", type=Path, default=AUDIT, help="tumor slices labelled healthy, as the audit lists them")
args = parser.parse_args()
dataset, folders = args.dataset, args.models
table = load_table(dataset, "grouped", with_test=False)
rows = np.flatnonzero(table.folds == 0)
truth, sources = table.labels[rows], np.array(table.sources)[rows]
notumor = table.class_names.index("notumor")
healthy = truth == notumor
listed_files = [SHARED / name for name in read_exclusions(args.listed) if "/br35h-" in name]


def probabilities(folder: str) -> dict[bool, tuple[torch.Tensor, torch.Tensor]]:
    """{flip: (fold 0's probabilities, the listed slices')}, the flipped ones averaged with the plain ones."""
    model = BrainResNetForImageClassification.from_pretrained(folder).eval()
    processor = BrainResNetImageProcessor.from_pretrained(folder)
    fold, listed = decode_images([table.images[i] for i in rows], processor, [processor.size], 2) + decode_images(
        [f.read_bytes() for f in listed_files], processor, [processor.size], 2
    )

    def predict(images: torch.Tensor, flip: bool) -> torch.Tensor:
        with torch.no_grad():
            batches = [model_input(b.float() / 255, processor) for b in images.split(128)]
            return torch.cat([model(pixel_values=b.flip(-1) if flip else b).logits.softmax(1) for b in batches])

    plain = [predict(images, False) for images in (fold, listed)]  # each forward pass once
    averaged = [(probs + predict(images, True)) / 2 for probs, images in zip(plain, (fold, listed), strict=True)]
    return {False: tuple(plain), True: tuple(averaged)}


def report(name: str, fold: torch.Tensor, listed: torch.Tensor) -> None:
    called = fold.argmax(1).numpy()
    right = called == truth
    by_source = " ".join(f"{s} {right[sources == s].mean():.4f}" for s in sorted(set(sources)))
    p_healthy, p_listed = fold[healthy, notumor].numpy(), listed[:, notumor].numpy()
    found = [(p_listed < np.quantile(p_healthy, alarms)).sum() for alarms in (0.01, 0.05, 0.10)]
    print(
        f"{name}: accuracy {right.mean():.4f} ({by_source}); tumors called a tumor "
        f"{(called[~healthy] != notumor).sum()} of {(~healthy).sum()}, healthy called notumor "
        f"{(called[healthy] == notumor).sum()} of {healthy.sum()}; listed Br35H called a tumor "
        f"{(listed.argmax(1) != notumor).sum().item()} of {len(listed_files)}, found at 1/5/10% false alarms "
        + "/".join(map(str, found))
    )


print(f"grouped fold 0 of {dataset}: {len(rows)} slices; {len(listed_files)} listed Br35H slices ({args.listed})")
scores = {folder: probabilities(folder) for folder in folders}
for folder, by_flip in scores.items():
    for flip, (fold, listed) in by_flip.items():
        report(folder + (" + mirror image" if flip else ""), fold, listed)
if len(folders) > 1:
    for flip in (False, True):
        mean = [torch.stack([scores[f][flip][part] for f in folders]).mean(0) for part in (0, 1)]
        report("mean of all" + (" + mirror images" if flip else ""), *mean)
