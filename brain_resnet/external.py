"""Slices of other sources, one folder per class: reading them and scoring a model's predictions on them.

Folder names are the model's labels, `tumor` for tumor slices of unknown type, or the folder names of public sets
(FOLDER_ALIASES). evaluation.py's `external` and make_release.py score models this way.
"""

from pathlib import Path

import numpy as np

from .cli import UsageError
from .data import NOTUMOR, open_image
from .folders import is_hidden, visible_dirs
from .metrics import share_interval

TUMOR = "tumor"  # an external folder of tumor slices of unknown type
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# Folder names of public brain-MRI sets, read as the model's labels: Br35H's yes/no and the *_tumor / no_tumor
# folders of Kaggle's "Brain Tumor Classification (MRI)".
FOLDER_ALIASES = {
    "yes": TUMOR,
    "no": NOTUMOR,
    "no_tumor": NOTUMOR,
    "glioma_tumor": "glioma",
    "meningioma_tumor": "meningioma",
    "pituitary_tumor": "pituitary",
}


def external_files(folder: Path, class_names: list[str]) -> list[tuple[Path, str]]:
    """(file, class) of every image file under DATA_FOLDER/<class>/: a label, TUMOR, or a FOLDER_ALIASES name."""
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder")
    allowed = [*class_names, TUMOR]
    folders = visible_dirs(folder)
    classes = {d: FOLDER_ALIASES.get(d.name.lower(), d.name.lower()) for d in folders}
    unknown = [d.name for d, name in classes.items() if name not in allowed]
    if unknown:
        raise UsageError(
            f"{folder}: folder {unknown[0]!r} is not a class; name folders {', '.join(allowed)} "
            f"(or {', '.join(FOLDER_ALIASES)})"
        )
    files = [
        (f, classes[d])
        for d in folders
        for f in sorted(d.rglob("*"))
        if f.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(f, d)
    ]
    if not files:
        raise UsageError(f"{folder}: no images in class folders ({', '.join(allowed)})")
    return files


def external_metrics(truth: list[str] | np.ndarray, predicted: list[str] | np.ndarray, groups=None) -> dict:
    """Accuracy on slices of a named class, tumor slices found, healthy slices called healthy, per class counts;
    given each slice's near-duplicate group, also each share's 95% interval (`intervals`, metrics.share_interval)."""
    truth, predicted = np.array(truth), np.array(predicted)
    shares = {  # the slices each share is over, and which of them count
        "accuracy": (truth != TUMOR, truth == predicted),
        "tumor_found": (truth != NOTUMOR, predicted != NOTUMOR),
        "notumor_specificity": (truth == NOTUMOR, predicted == NOTUMOR),
    }
    metrics = {"slices": int(len(truth))}
    metrics |= {name: float(hits[over].mean()) if over.any() else None for name, (over, hits) in shares.items()}
    if groups is not None:
        groups = np.asarray(groups)
        metrics["intervals"] = {
            name: share_interval(hits[over], groups[over]) for name, (over, hits) in shares.items() if over.any()
        }
    metrics["predicted_by_class"] = {}
    for name in sorted(set(truth)):
        values, counts = np.unique(predicted[truth == name], return_counts=True)
        metrics["predicted_by_class"][name] = dict(zip(values.tolist(), counts.tolist(), strict=True))
    return metrics


def read_external(files: list[tuple[Path, str]]) -> tuple[list[bytes], list[tuple[Path, str]], list[str]]:
    """The encoded bytes of every readable file, its (file, class), and 'file: reason' for each unreadable one
    (a broken or non-image file is reported and skipped, not fatal)."""
    images, kept, unreadable = [], [], []
    for file, truth in files:
        try:
            data = file.read_bytes()
            open_image(data)
        except Exception as error:  # PIL reports damage as OSError, SyntaxError, ValueError, ...
            unreadable.append(f"{file}: {error}")
            continue
        images.append(data)
        kept.append((file, truth))
    return images, kept, unreadable
