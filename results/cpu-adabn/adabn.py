"""Score released MODEL folders on SLICES (one subfolder per class) as released, then again after re-estimating
every BatchNorm layer's running mean and variance on those slices, without their labels (AdaBN, Li et al., 2016).
Beside the scores at the release's operating point, the AUROC of tumor against healthy slices (1 - P(notumor)),
which no threshold moves.

PYTHONPATH=. python results/cpu-adabn/adabn.py SLICES MODEL [MODEL ...]
"""

import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from transformers import AutoModelForImageClassification

from brain_resnet.data import decode_images
from brain_resnet.engine import model_input
from brain_resnet.external import external_files, external_metrics, read_external
from brain_resnet.modeling import BrainResNetImageProcessor

BATCH = 64


@torch.no_grad()
def probabilities(model, pixels: torch.Tensor) -> np.ndarray:
    model.eval()
    return torch.cat([model(pixel_values=batch).logits.softmax(1) for batch in pixels.split(BATCH)]).numpy()


@torch.no_grad()
def adapt_batchnorm(model, pixels: torch.Tensor) -> None:
    """Every BatchNorm layer's running statistics re-estimated on `pixels`: their mean over batches of BATCH (the
    model's forward also passes each batch's mirror images, as the release classifies)."""
    layers = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over the batches, not an exponential one
    model.train()
    generator = torch.Generator().manual_seed(0)
    for rows in torch.randperm(len(pixels), generator=generator).split(BATCH):
        model(pixel_values=pixels[rows])
    model.eval()


def summary(truth: np.ndarray, probs: np.ndarray, names: list[str]) -> str:
    metrics = external_metrics(truth.tolist(), np.array(names)[probs.argmax(1)].tolist())
    auroc = roc_auc_score(truth != "notumor", 1 - probs[:, names.index("notumor")])
    return (
        f"4-class accuracy {metrics['accuracy']:.4f}, tumors found {metrics['tumor_found']:.4f}, "
        f"healthy called notumor {metrics['notumor_specificity']:.4f}, AUROC tumor vs healthy {auroc:.4f}"
    )


folder = Path(sys.argv[1])
for run in sys.argv[2:]:
    model = AutoModelForImageClassification.from_pretrained(run, trust_remote_code=True)
    processor = BrainResNetImageProcessor.from_pretrained(run)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    files, kept, _ = read_external(external_files(folder, names))
    (images,) = decode_images(files, processor, [processor.size], 2)
    pixels = model_input(images.float() / 255, processor)
    truth = np.array([name for _, name in kept])
    print(f"{run} on {folder} ({len(truth)} slices)")
    print(f"    as released:             {summary(truth, probabilities(model, pixels), names)}")
    adapt_batchnorm(model, pixels)
    print(f"    statistics re-estimated: {summary(truth, probabilities(model, pixels), names)}")
