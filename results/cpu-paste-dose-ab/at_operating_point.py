"""A diagnostic beside the A/B's rule, not part of it: each MODEL of this A/B (trained on the 4k rows plus sartaj's
healthy slices) on its held-out fold 0 at the release's kind of operating point, the notumor logit shifted so that
5% of the held-out healthy slices are called a tumor: the fold's accuracy with the point cross-fitted as
make_release.py does it (fitted on one half of the fold, near-duplicate groups whole, scoring the other, both ways,
over CROSS_FIT_REPEATS halvings), and, at the point fitted on the whole fold, its accuracy, the held-out healthy
slices of each source called healthy and the tumors found.
PYTHONPATH=. python results/cpu-paste-dose-ab/at_operating_point.py MODEL [MODEL ...]"""

import sys

import numpy as np
import torch
from transformers import AutoModelForImageClassification

from brain_resnet.calibration import CROSS_FIT_REPEATS, cross_fitted_calls, notumor_offset
from brain_resnet.data import decode_images, load_table
from brain_resnet.engine import model_input
from brain_resnet.modeling import BrainResNetImageProcessor

FALSE_ALARMS = 0.05
table = load_table("data/all-sources", "grouped", with_test=False, sources=["figshare", "br35h", "sartaj/notumor"])
notumor = table.class_names.index("notumor")
held_out = np.flatnonzero(table.folds == 0)
truth, groups, sources = table.labels[held_out], table.groups[held_out], np.array(table.sources)[held_out]
healthy = truth == notumor

for run in sys.argv[1:]:
    model = AutoModelForImageClassification.from_pretrained(run, trust_remote_code=True).eval()
    processor = BrainResNetImageProcessor.from_pretrained(run)
    (pixels,) = decode_images([table.images[i] for i in held_out], processor, [processor.size], 2)
    with torch.no_grad():
        logits = model(pixel_values=model_input(pixels.float() / 255, processor)).logits.float()
    repeats = range(CROSS_FIT_REPEATS)
    crossed = [cross_fitted_calls(logits, truth, groups, notumor, FALSE_ALARMS, seed) for seed in repeats]
    shifted = logits.clone()
    shifted[:, notumor] += notumor_offset(logits, truth, notumor, FALSE_ALARMS)
    calls = shifted.argmax(dim=1).numpy()
    by_source = []
    for source in ("br35h", "sartaj"):
        rows = healthy & (sources == source)
        by_source.append(f"{source} {np.mean(calls[rows] == notumor):.3f} ({rows.sum()})")
    print(
        run,
        f"as trained {np.mean(logits.argmax(dim=1).numpy() == truth):.4f}",
        f"at {FALSE_ALARMS:.0%} (cross-fitted) {np.mean([np.mean(c == truth) for c in crossed]):.4f}",
        f"at {FALSE_ALARMS:.0%} (whole fold) {np.mean(calls == truth):.4f}",
        f"there, healthy called healthy {', '.join(by_source)}",
        f"tumors found {np.mean(calls[~healthy] != notumor):.4f}",
        sep=" | ",
    )
