"""Every fold model's logits on its own held-out fold, so that operating points and per-source scores can be worked
out later without the fold models (which stay on the GPU machine):

    PYTHONPATH=. python results/gpu-6/held_out_logits.py DATASET OUTPUT.json RUN [RUN ...]

Rows are positions in DATASET's train split (the runs' dataset, grouped folds), with their label, source and
fold written once; each run gets {fold: logits of its held-out rows, in row order}, and "mirrored_runs" the same for
each slice's mirror image (a --mirror-average release classifies the mean of the two: its head is linear, so its
logits are the mean of these two).
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForImageClassification

from brain_resnet.data import decode_images, load_table
from brain_resnet.engine import model_input
from brain_resnet.modeling import BrainResNetImageProcessor

dataset, output, runs = sys.argv[1], Path(sys.argv[2]), [Path(run) for run in sys.argv[3:]]
table = load_table(dataset, "grouped", with_test=False)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
report = {
    "class_names": table.class_names,
    "labels": table.labels.tolist(),
    "sources": list(table.sources),
    "folds": table.folds.tolist(),
    "runs": {},
    "mirrored_runs": {},
}
for run in runs:
    report["runs"][str(run)], report["mirrored_runs"][str(run)] = {}, {}
    for folder in sorted(run.glob("fold-*")):
        if not (folder / "config.json").exists():
            continue
        fold = int(folder.name.removeprefix("fold-"))
        model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval().to(device)
        processor = BrainResNetImageProcessor.from_pretrained(folder)
        rows = np.flatnonzero(table.folds == fold)
        (images,) = decode_images([table.images[i] for i in rows], processor, [processor.size], 4)
        logits, mirrored = [], []
        with torch.no_grad():
            for batch in images.split(256):
                pixels = model_input(batch.to(device).float() / 255, processor)
                logits.append(model(pixel_values=pixels).logits.float().cpu())
                mirrored.append(model(pixel_values=pixels.flip(-1)).logits.float().cpu())
        report["runs"][str(run)][str(fold)] = torch.cat(logits).round(decimals=4).tolist()
        report["mirrored_runs"][str(run)][str(fold)] = torch.cat(mirrored).round(decimals=4).tolist()
        print(f"{folder}: {len(rows)} held-out rows", flush=True)
output.write_text(json.dumps(report))
