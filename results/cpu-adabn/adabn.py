"""Score released MODEL folders on SLICES (one subfolder per class) as released, then again after re-estimating
every BatchNorm layer's running mean and variance on those slices, without their labels (AdaBN, Li et al., 2016).

PYTHONPATH=. python results/cpu-adabn/adabn.py SLICES MODEL [MODEL ...]
"""

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForImageClassification

from brain_resnet.data import decode_images
from brain_resnet.engine import model_input
from brain_resnet.external import external_files, external_metrics, read_external
from brain_resnet.modeling import BrainResNetImageProcessor

BATCH = 64


@torch.no_grad()
def predictions(model, pixels: torch.Tensor, names: list[str]) -> np.ndarray:
    model.eval()
    logits = torch.cat([model(pixel_values=batch).logits for batch in pixels.split(BATCH)])
    return np.array(names)[logits.argmax(1).numpy()]


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


def summary(truth: np.ndarray, called: np.ndarray) -> str:
    metrics = external_metrics(truth.tolist(), called.tolist())
    return (
        f"4-class accuracy {metrics['accuracy']:.4f}, tumors found {metrics['tumor_found']:.4f}, "
        f"healthy called notumor {metrics['notumor_specificity']:.4f}"
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
    print(f"    as released:             {summary(truth, predictions(model, pixels, names))}")
    adapt_batchnorm(model, pixels)
    print(f"    statistics re-estimated: {summary(truth, predictions(model, pixels, names))}")
