"""Score 4k-only fold models on their held-out fold and on SLICES (one subfolder per class) as trained, and with
their softmax averaged over test-time views: the identity plus VIEWS draws of the training augmentation
(`augment`, geometry and intensity jitter, from the training cache's margin) or five gamma curves spanning the
training jitter's range (0.70-1.42, no geometry). Beside the argmax scores, the AUROC of tumor against healthy
slices (1 - P(notumor)), which no threshold moves.

PYTHONPATH=. python results/cpu-tta-ab/tta.py DATASET SLICES RUN [RUN ...]     # RUN: a train.py output folder
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from transformers import AutoModelForImageClassification

from brain_resnet.augment import augment
from brain_resnet.data import CACHE_MARGIN, NOTUMOR, decode_images, load_table
from brain_resnet.engine import model_input
from brain_resnet.external import external_files, external_metrics, read_external
from brain_resnet.modeling import BrainResNetImageProcessor

BATCH = 128
VIEWS = 16
GAMMAS = np.exp(np.linspace(-0.35, 0.35, 5))  # the training jitter's gamma range, evenly


@torch.no_grad()
def probabilities(model, processor, views) -> np.ndarray:
    """Mean softmax over `views`: each a float (N, 1, size, size) tensor in [0, 1]."""
    total = 0
    for view in views:
        batches = [model(pixel_values=model_input(b, processor)).logits.softmax(1) for b in view.split(BATCH)]
        total = total + torch.cat(batches)
    return (total / len(views)).numpy()


def training_views(cache: torch.Tensor, size: int) -> list[torch.Tensor]:
    torch.manual_seed(0)
    np.random.seed(0)  # augment draws the lower resolution's factor from numpy
    return [torch.cat([augment(b, size) for b in cache.split(BATCH)]) for _ in range(VIEWS)]


def scores(truth: np.ndarray, probs: np.ndarray, names: list[str]) -> dict:
    metrics = external_metrics(truth.tolist(), np.array(names)[probs.argmax(1)].tolist())
    return {
        "accuracy": metrics["accuracy"],
        "tumor_found": metrics["tumor_found"],
        "notumor_specificity": metrics["notumor_specificity"],
        "auroc_tumor_vs_healthy": float(roc_auc_score(truth != NOTUMOR, 1 - probs[:, names.index(NOTUMOR)])),
    }


def image_sets(run: Path, dataset: str, slices: Path, names: list[str]) -> dict[str, tuple[list, np.ndarray]]:
    """The run's held-out fold (its dataset rows, as train.py selected them) and SLICES: images and class names."""
    settings = json.loads((run / "run_args.json").read_text())["settings"]
    table = load_table(dataset, settings["protocol"], False, sources=settings["sources"])
    held_out = np.flatnonzero(table.folds == 0)
    fold_truth = np.array(table.class_names)[table.labels[held_out]]
    images, kept, _ = read_external(external_files(slices, names))
    return {
        "fold 0": ([table.images[i] for i in held_out], fold_truth),
        slices.name: (images, np.array([name for _, name in kept])),
    }


dataset, slices = sys.argv[1], Path(sys.argv[2])
results = {}
for run in map(Path, sys.argv[3:]):
    model = AutoModelForImageClassification.from_pretrained(run / "fold-0", trust_remote_code=True).eval()
    processor = BrainResNetImageProcessor.from_pretrained(run / "fold-0")
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    size = processor.size
    print(f"{run}/fold-0, {size} px")
    for set_name, (images, truth) in image_sets(run, dataset, slices, names).items():
        plain, cache = decode_images(images, processor, [size, round(size * CACHE_MARGIN)], 2)
        plain = plain.float() / 255
        variants = {
            "as trained": [plain],
            f"identity + {VIEWS} training views": [plain, *training_views(cache, size)],
            f"{len(GAMMAS)} gamma curves": [plain.pow(float(g)) for g in GAMMAS],
        }
        for variant, views in variants.items():
            result = scores(truth, probabilities(model, processor, views), names)
            results.setdefault(str(run), {}).setdefault(set_name, {})[variant] = result
            figures = ", ".join(f"{key} {value:.4f}" for key, value in result.items())
            print(f"    {set_name:>24} ({len(truth)}), {variant:>32}: {figures}")
print(json.dumps(results, indent=1))
