"""README's found-at-false-alarms snippet (section "A source seen with healthy slices only"), as the lease ran it:
PYTHONPATH=. python results/gpu-4/found_at_false_alarms.py MODEL [MODEL ...]"""

import sys
from pathlib import Path
import numpy as np, torch
from sklearn.metrics import roc_auc_score
from transformers import AutoModelForImageClassification
from brain_resnet.data import decode_images, load_table
from brain_resnet.engine import model_input
from brain_resnet.modeling import BrainResNetImageProcessor
files = sorted(Path("data/brain-tumor-mri-sartaj").glob("*/*.jpg"))
sartaj_tumor = np.array([f.parent.name != "notumor" for f in files])
table = load_table("data/all-sources", "grouped", with_test=False, sources=["figshare", "br35h"])
held_out = np.flatnonzero(table.folds == 0)
notumor = table.class_names.index("notumor")
held_out_healthy = table.labels[held_out] == notumor
for run in sys.argv[1:]:
    model = AutoModelForImageClassification.from_pretrained(run, trust_remote_code=True).eval()
    processor = BrainResNetImageProcessor.from_pretrained(run)

    def tumor_probability(images):
        (pixels,) = decode_images(images, processor, [processor.size], 2)
        with torch.no_grad():
            logits = model(pixel_values=model_input(pixels.float() / 255, processor)).logits
        return 1 - logits.softmax(1)[:, notumor].numpy()

    sartaj = tumor_probability([f.read_bytes() for f in files])
    held = tumor_probability([table.images[i] for i in held_out])[held_out_healthy]
    # The model's own operating point (tumor when P(notumor) < 0.5), then thresholds that call 1%, 5% and 10% of
    # the held-out healthy Br35H slices a tumor (false alarms): how many sartaj tumors each finds.
    found = [f"own: false alarms {(held > 0.5).mean():.3f}, found {(sartaj[sartaj_tumor] > 0.5).mean():.3f}"]
    for alarms in (0.01, 0.05, 0.10):
        found.append(f"at {alarms:.0%}: {(sartaj[sartaj_tumor] > np.quantile(held, 1 - alarms)).mean():.3f}")
    print(run, f"AUROC {roc_auc_score(sartaj_tumor, sartaj):.3f}", *found, sep=" | ")
