"""A diagnostic beside the A/B's rule, not part of it: each 4k-only MODEL at the release's kind of operating point,
the notumor logit shifted so that 5% of held-out healthy slices are called a tumor (calibration.notumor_offset).
Fold 0 accuracy with the point cross-fitted as make_release.py does it (fitted on one half of the fold, near-
duplicate groups whole, scoring the other, both ways, over CROSS_FIT_REPEATS halvings), and sartaj's 4-class
accuracy, tumors found and healthy called healthy at the point fitted on the whole held-out fold.
PYTHONPATH=. python results/cpu-dark-lesion-ab/at_operating_point.py MODEL [MODEL ...]"""

import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForImageClassification

from brain_resnet.calibration import CROSS_FIT_REPEATS, cross_fitted_calls, notumor_offset
from brain_resnet.data import decode_images, load_table
from brain_resnet.engine import model_input
from brain_resnet.modeling import BrainResNetImageProcessor

FALSE_ALARMS = 0.05
files = sorted(Path("data/brain-tumor-mri-sartaj").glob("*/*.jpg"))
table = load_table("data/all-sources", "grouped", with_test=False, sources=["figshare", "br35h"])
notumor = table.class_names.index("notumor")
sartaj_truth = np.array([table.class_names.index(f.parent.name) for f in files])
held_out = np.flatnonzero(table.folds == 0)
truth, groups = table.labels[held_out], table.groups[held_out]


def cross_fitted_accuracy(logits: torch.Tensor) -> float:
    repeats = range(CROSS_FIT_REPEATS)
    calls = [cross_fitted_calls(logits, truth, groups, notumor, FALSE_ALARMS, seed) for seed in repeats]
    return float(np.mean([np.mean(seed_calls == truth) for seed_calls in calls]))


def logits_of(model, processor, images: list) -> torch.Tensor:
    (pixels,) = decode_images(images, processor, [processor.size], 2)
    with torch.no_grad():
        return model(pixel_values=model_input(pixels.float() / 255, processor)).logits.float()


for run in sys.argv[1:]:
    model = AutoModelForImageClassification.from_pretrained(run, trust_remote_code=True).eval()
    processor = BrainResNetImageProcessor.from_pretrained(run)
    held = logits_of(model, processor, [table.images[i] for i in held_out])
    sartaj = logits_of(model, processor, [f.read_bytes() for f in files])
    sartaj[:, notumor] += notumor_offset(held, truth, notumor, FALSE_ALARMS)
    calls, healthy = sartaj.argmax(dim=1).numpy(), sartaj_truth == notumor
    print(
        run,
        f"fold 0 at {FALSE_ALARMS:.0%} (cross-fitted) {cross_fitted_accuracy(held):.4f}",
        f"sartaj 4-class {np.mean(calls == sartaj_truth):.4f}",
        f"tumors found {np.mean(calls[~healthy] != notumor):.4f}",
        f"healthy called healthy {np.mean(calls[healthy] == notumor):.4f}",
        sep=" | ",
    )
