"""Every fold model's logits on every row of the dataset, and on each row's mirror image, so that held-out folds,
operating points and the audited patients can be scored later without the fold models (which stay on the GPU
machine):

    PYTHONPATH=. python results/gpu-7/row_logits.py DATASET OUTPUT.json RUN [RUN ...]

Rows are the dataset's train split in order (every row, whatever a run excluded), with file, label, source and
grouped fold written once; each run gets {fold: logits of every row} and the same under "mirrored". A model made
with --mirror-average would classify the mean of the two (its head is linear).
"""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForImageClassification

from brain_resnet.data import decode_images, load_table, read_splits
from brain_resnet.engine import model_input
from brain_resnet.modeling import BrainResNetImageProcessor

dataset, output, runs = sys.argv[1], Path(sys.argv[2]), [Path(run) for run in sys.argv[3:]]
table = load_table(dataset, "grouped", with_test=False)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
report = {
    "class_names": table.class_names,
    "files": read_splits(dataset)[0]["train"]["file"],
    "labels": table.labels.tolist(),
    "sources": list(table.sources),
    "folds": table.folds.tolist(),
    "runs": {},
    "mirrored": {},
}
images, size = None, None
for run in runs:
    report["runs"][str(run)], report["mirrored"][str(run)] = {}, {}
    for folder in sorted(run.glob("fold-*")):
        if not (folder / "config.json").exists():
            print(f"{folder}: no model saved, skipped", flush=True)
            continue
        model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval().to(device)
        processor = BrainResNetImageProcessor.from_pretrained(folder)
        if processor.size != size:  # decoded once for all models of one image size
            (images,), size = decode_images(table.images, processor, [processor.size], 8), processor.size
        logits, mirrored = [], []
        with torch.no_grad():
            for batch in images.split(512):
                pixels = model_input(batch.to(device).float() / 255, processor)
                logits.append(model(pixel_values=pixels).logits.float().cpu())
                mirrored.append(model(pixel_values=pixels.flip(-1)).logits.float().cpu())
        fold = folder.name.removeprefix("fold-")
        report["runs"][str(run)][fold] = torch.cat(logits).round(decimals=3).tolist()
        report["mirrored"][str(run)][fold] = torch.cat(mirrored).round(decimals=3).tolist()
        print(f"{folder}: {len(table.labels)} rows", flush=True)
output.write_text(json.dumps(report))
