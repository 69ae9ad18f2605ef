"""Released models on one grouped fold of a prepared dataset, source by source, each with its shipped weights:

    python results/label-audit/held_out_by_source.py DATASET FOLD MODEL [MODEL ...]

For every source and for all rows of the fold: slices, 4-class accuracy, tumor slices called a tumor (any class but
notumor) and healthy slices called notumor, the model's own call (a release's operating point is in its weights).
"""

import sys

import numpy as np
import torch
from transformers import AutoModelForImageClassification

from brain_resnet.data import decode_images, load_table
from brain_resnet.engine import model_input
from brain_resnet.modeling import BrainResNetImageProcessor

dataset, fold, folders = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
table = load_table(dataset, "grouped", with_test=False)
rows = np.flatnonzero(table.folds == fold)
truth = table.labels[rows]
sources = np.array(table.sources)[rows]
notumor = table.class_names.index("notumor")
for folder in folders:
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    processor = BrainResNetImageProcessor.from_pretrained(folder)
    (images,) = decode_images([table.images[i] for i in rows], processor, [processor.size], 2)
    with torch.no_grad():
        batches = [model_input(batch.float() / 255, processor) for batch in images.split(128)]
        called = torch.cat([model(pixel_values=batch).logits.argmax(1) for batch in batches]).numpy()
    print(f"{folder} on fold {fold} of {dataset}")
    for source in ["all", *sorted(set(sources))]:
        picked = np.ones(len(rows), bool) if source == "all" else sources == source
        healthy, tumor = picked & (truth == notumor), picked & (truth != notumor)
        scores = [f"{picked.sum()} slices", f"accuracy {(called[picked] == truth[picked]).mean():.4f}"]
        if tumor.any():
            scores.append(f"tumors called a tumor {(called[tumor] != notumor).sum()} of {tumor.sum()}")
        if healthy.any():
            scores.append(f"healthy called notumor {(called[healthy] == notumor).sum()} of {healthy.sum()}")
        print(f"  {source}: " + ", ".join(scores))
