"""Class-conditional source alignment for train.py --match-sources: a penalty on how far apart the sources' mean
pooled features lie within each class of a batch.

Where a source contributes one class only (Br35H its healthy slices), anything that tells its slices apart (the
scanner, the sequence, the framing) is a shortcut to that class. The classifier is linear in the pooled features,
so when every class's slices of each source have the same mean features, its average answer for a class no longer
depends on the source. Matching means is a fixed objective, stable under gradient descent, and needs no extra
network (an adversarial source classifier trained through a reversed gradient, tried first, only flipped its
guesses on a toy problem instead of removing the source).
"""

import torch


def source_mean_gap(
    features: torch.Tensor, labels: torch.Tensor, sources: torch.Tensor, num_classes: int, num_sources: int
) -> torch.Tensor:
    """Mean over the classes that have 2+ sources in the batch of the spread of their sources' mean features.

    features: float (B, D); labels, sources: long (B,). The spread of a class is the mean squared distance (per
    feature) of each present source's mean to the class's average of those means, so every source counts the same
    however many of its slices the batch holds. 0 when no class has 2 sources in the batch.
    """
    cell = labels * num_sources + sources
    counts = torch.bincount(cell, minlength=num_classes * num_sources).to(features.dtype)
    sums = torch.zeros(num_classes * num_sources, features.shape[1], device=features.device, dtype=features.dtype)
    means = (sums.index_add(0, cell, features) / counts.clamp(min=1)[:, None]).view(num_classes, num_sources, -1)
    present = (counts > 0).to(features.dtype).view(num_classes, num_sources)
    per_class = present.sum(dim=1)
    centre = (means * present[..., None]).sum(dim=1) / per_class.clamp(min=1)[:, None]
    spread = (((means - centre[:, None]) ** 2).mean(dim=-1) * present).sum(dim=1) / per_class.clamp(min=1)
    mixed = (per_class > 1).to(features.dtype)
    return (spread * mixed).sum() / mixed.sum().clamp(min=1)
