"""How much of a released model's error on a source it never saw its unfamiliar-image warning flags: for each
released MODEL folder, over the slices of a folder of other-source slices (one subfolder per class), the share
flagged (unfamiliarity above 1), accuracy flagged and not, and which errors are flagged: healthy slices called a
tumor, tumors called healthy, tumors given the wrong type.
PYTHONPATH=. python results/cpu-warning-unseen-source/by_class.py SLICES MODEL [MODEL ...]"""

import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForImageClassification

from brain_resnet.data import decode_images
from brain_resnet.engine import model_input
from brain_resnet.external import external_files, read_external
from brain_resnet.modeling import BrainResNetImageProcessor

folder = Path(sys.argv[1])
for run in sys.argv[2:]:
    model = AutoModelForImageClassification.from_pretrained(run, trust_remote_code=True).eval()
    processor = BrainResNetImageProcessor.from_pretrained(run)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    slices, kept, _ = read_external(external_files(folder, names))
    (images,) = decode_images(slices, processor, [processor.size], 2)
    with torch.no_grad():
        outputs = model(pixel_values=model_input(images.float() / 255, processor))
    called = np.array(names)[outputs.logits.argmax(dim=1).numpy()]
    truth = np.array([name for _, name in kept])
    flagged = outputs.unfamiliarity.numpy() > 1
    right = called == truth
    healthy = truth == "notumor"
    errors = {
        "healthy called a tumor": healthy & ~right,
        "tumors called healthy": ~healthy & (called == "notumor"),
        "tumors given the wrong type": ~healthy & ~right & (called != "notumor"),
    }
    print(
        f"{run}: {len(truth)} slices, {flagged.mean():.1%} flagged; accuracy flagged {right[flagged].mean():.3f}, "
        f"not flagged {right[~flagged].mean():.3f}; errors flagged {flagged[~right].mean():.1%} of {(~right).sum()}"
    )
    for kind, rows in errors.items():
        print(f"    {kind}: {rows.sum()}, of them flagged {flagged[rows].sum()}")
