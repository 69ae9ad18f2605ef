"""Last-layer retraining on cells that break the source shortcut (after Kirichenko et al., "Last Layer Re-Training
is Sufficient for Robustness to Spurious Correlations", ICLR 2023): a 4k-only MODEL's backbone frozen, its linear
head refitted on the pooled features of its own training rows (grouped folds 1-4 of figshare and Br35H in
data/all-sources) plus the same rows remade across the shortcut by the training's own augmentations, every training
Br35H healthy slice with a pasted lesion (a tumor on Br35H's look, its donor's class) and every training figshare
slice with a known tumour side as one half and its mirror image (a healthy brain or the tumour's half, figshare's
look), each (background source, healthy or tumor) cell weighted alike. C is chosen on grouped fold 1 of those rows by
weighted log loss, then the head is refitted on all of them; sartaj is never looked at. Saves the model with the
refitted head to OUTPUT and prints held-out fold 0 accuracy with the old and the new head.
PYTHONPATH=. python results/cpu-dfr-ab/refit_head.py MODEL OUTPUT"""

import shutil
import sys

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.preprocessing import StandardScaler
from transformers import AutoModelForImageClassification

from brain_resnet.augment import LATERAL_TUMOUR_CLASSES, mirror_hemispheres, paste_lesions, tumour_sides
from brain_resnet.data import decode_images, load_table
from brain_resnet.engine import model_input
from brain_resnet.modeling import BrainResNetImageProcessor

source, output = sys.argv[1:]
model = AutoModelForImageClassification.from_pretrained(source, trust_remote_code=True).eval()
processor = BrainResNetImageProcessor.from_pretrained(source)
table = load_table("data/all-sources", "grouped", with_test=False, sources=["figshare", "br35h"])
names = table.class_names
assert names == [model.config.id2label[i] for i in range(len(names))], "the model's classes are not the dataset's"
healthy = names.index("notumor")
(pixels,) = decode_images(table.images, processor, [processor.size], 2)
lateral = torch.from_numpy(np.isin(table.labels, [names.index(name) for name in LATERAL_TUMOUR_CLASSES]))
sides = torch.where(lateral, tumour_sides(pixels), 0).to(torch.int8)

train = np.flatnonzero(table.folds != 0)  # donors and halves from training rows only
images, labels, train_sides = pixels[train], torch.from_numpy(table.labels[train]), sides[train]
torch.manual_seed(0)
pasted, pasted_labels = paste_lesions(images, labels, train_sides, healthy, prob=1.0)
is_pasted = (labels == healthy).numpy()
mirrored, mirrored_labels = mirror_hemispheres(images, labels, train_sides, healthy, prob=1.0)
is_mirrored = (train_sides != 0).numpy()
sources = np.asarray(table.sources)[train]
views = torch.cat([images, pasted[is_pasted], mirrored[is_mirrored]])
view_labels = torch.cat([labels, pasted_labels[is_pasted], mirrored_labels[is_mirrored]]).numpy()
backgrounds = np.concatenate([sources, ["br35h"] * is_pasted.sum(), ["figshare"] * is_mirrored.sum()])
view_folds = np.concatenate([table.folds[train], table.folds[train][is_pasted], table.folds[train][is_mirrored]])
cells = [
    f"{background}/{'healthy' if label == healthy else 'tumor'}"
    for background, label in zip(backgrounds, view_labels, strict=True)
]
cell_names, cell_ids, cell_sizes = np.unique(cells, return_inverse=True, return_counts=True)
weights = len(cells) / (len(cell_names) * cell_sizes[cell_ids])
print("cells:", ", ".join(f"{name} {size}" for name, size in zip(cell_names, cell_sizes, strict=True)))


@torch.no_grad()
def pooled(uint8_images: torch.Tensor) -> np.ndarray:
    return torch.cat(
        [model.pooled_features(model_input(chunk.float() / 255, processor)) for chunk in uint8_images.split(256)]
    ).numpy()


features = pooled(views)
held_out = np.flatnonzero(table.folds == 0)
held_out_features, held_out_labels = pooled(pixels[held_out]), table.labels[held_out]


def fitted(C: float, rows: np.ndarray) -> tuple[StandardScaler, LogisticRegression]:
    scaler = StandardScaler().fit(features[rows])
    head = LogisticRegression(C=C, max_iter=5000).fit(
        scaler.transform(features[rows]), view_labels[rows], sample_weight=weights[rows]
    )
    return scaler, head


validation = view_folds == 1
losses = {}
for C in (0.001, 0.01, 0.1, 1.0):
    scaler, head = fitted(C, np.flatnonzero(~validation))
    probabilities = head.predict_proba(scaler.transform(features[validation]))
    losses[C] = log_loss(
        view_labels[validation], probabilities, sample_weight=weights[validation], labels=range(len(names))
    )
best = min(losses, key=losses.get)
print(
    "weighted validation log loss by C:", ", ".join(f"{C:g} {loss:.4f}" for C, loss in losses.items()), "| chosen", best
)
scaler, head = fitted(best, np.arange(len(view_labels)))

linear = model.classifier[-1]
old_accuracy = (linear(torch.from_numpy(held_out_features)).argmax(1).numpy() == held_out_labels).mean()
# the standardisation folded into the linear layer: w (x - mean) / scale + b
weight = head.coef_ / scaler.scale_
bias = head.intercept_ - (weight * scaler.mean_).sum(1)
with torch.no_grad():
    linear.weight.copy_(torch.from_numpy(weight).float())
    linear.bias.copy_(torch.from_numpy(bias).float())
new_accuracy = (linear(torch.from_numpy(held_out_features)).argmax(1).numpy() == held_out_labels).mean()
print(
    f"held-out fold 0 accuracy ({len(held_out)} slices): own head {old_accuracy:.4f}, refitted head {new_accuracy:.4f}"
)
shutil.copytree(source, output, dirs_exist_ok=True)
model.save_pretrained(output)
