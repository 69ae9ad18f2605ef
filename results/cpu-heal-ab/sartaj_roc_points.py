"""The record's ROC points on sartaj (section "Healed lesions"): for each 4k-only MODEL, the share of sartaj's healthy
slices called healthy where the threshold on P(tumor) = 1 - P(notumor) finds 90% and 95% of sartaj's tumors (a point
of the ROC curve, set on sartaj itself: a diagnostic, not an operating point), all healthy slices and those not
left-right symmetric (sagittal, mostly). PYTHONPATH=. python results/cpu-heal-ab/sartaj_roc_points.py MODEL..."""

import sys
from pathlib import Path
import numpy as np, torch
from sklearn.metrics import roc_auc_score
from transformers import AutoModelForImageClassification
from brain_resnet.augment import MIN_MIRROR_SYMMETRY, left_right_symmetry
from brain_resnet.data import decode_images
from brain_resnet.engine import model_input
from brain_resnet.modeling import BrainResNetImageProcessor
files = sorted(Path("data/brain-tumor-mri-sartaj").glob("*/*.jpg"))
tumor = np.array([f.parent.name != "notumor" for f in files])
for run in sys.argv[1:]:
    model = AutoModelForImageClassification.from_pretrained(run, trust_remote_code=True).eval()
    processor = BrainResNetImageProcessor.from_pretrained(run)
    notumor = model.config.label2id["notumor"]
    (pixels,) = decode_images([f.read_bytes() for f in files], processor, [processor.size], 2)
    with torch.no_grad():
        logits = model(pixel_values=model_input(pixels.float() / 255, processor)).logits
    p_tumor = 1 - logits.softmax(1)[:, notumor].numpy()
    other = (left_right_symmetry(pixels) <= MIN_MIRROR_SYMMETRY).numpy()
    points = []
    for found in (0.90, 0.95):
        threshold = np.quantile(p_tumor[tumor], 1 - found)  # this share of the tumors scores at or above it
        healthy_called_healthy = p_tumor < threshold
        points.append(
            f"{found:.0%} found: healthy {healthy_called_healthy[~tumor].mean():.3f}, "
            f"other healthy {healthy_called_healthy[~tumor & other].sum()}/{(~tumor & other).sum()}"
        )
    print(f"{run} | AUROC {roc_auc_score(tumor, p_tumor):.3f} | " + " | ".join(points))
