"""How many of the label audit's 77 Br35H tumor slices a released model finds at several shares of held-out healthy
slices called a tumor (grouped fold 0 of data/all-sources-clean), its P(notumor) as the score: a diagnostic of the
operating point, not a way to choose one (these 77 are a test set).

    python results/label-audit/found_at_false_alarms.py [MODEL]   (default: release)
"""

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForImageClassification

from brain_resnet.data import decode_images, load_table
from brain_resnet.engine import model_input
from brain_resnet.folds import read_exclusions
from brain_resnet.modeling import BrainResNetImageProcessor

folder = sys.argv[1] if len(sys.argv) > 1 else "release"
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
processor = BrainResNetImageProcessor.from_pretrained(folder)
notumor = model.config.label2id["notumor"]

table = load_table("data/all-sources-clean", "grouped", with_test=False)
healthy = np.flatnonzero((table.folds == 0) & (table.labels == table.class_names.index("notumor")))
(images,) = decode_images([table.images[i] for i in healthy], processor, [processor.size], 2)
with torch.no_grad():
    p_healthy = model(pixel_values=model_input(images.float() / 255, processor)).logits.softmax(1)[:, notumor].numpy()

listed = [name for name in read_exclusions(Path(__file__).with_name("doubtful-notumor.txt")) if "/br35h-" in name]
p_audited = []
for name in listed:
    with Image.open(Path("../shared/data") / name) as image, torch.no_grad():
        p_audited.append(float(model(**processor(image, return_tensors="pt")).logits.softmax(-1)[0, notumor]))
p_audited = np.array(p_audited)

print(f"{folder}: {len(healthy)} held-out healthy slices of fold 0, {len(p_audited)} audited Br35H tumor slices")
for alarms in (0.01, 0.05, 0.10, 0.20, 0.30):
    threshold = np.quantile(p_healthy, alarms)  # a slice is called a tumor when its P(notumor) is below this
    found = (p_audited < threshold).sum()
    print(f"{alarms:.0%} of held-out healthy called a tumor: {found} of {len(p_audited)} audited tumors found")
