"""Slices of other sources, one folder per class: reading them and scoring a model's predictions on them.

Folder names are the model's labels, `tumor` for tumor slices of unknown type, or the folder names of public sets
(FOLDER_ALIASES). evaluation.py's `external` and make_release.py score models this way.
"""

import sys
from pathlib import Path

import numpy as np

from .cli import UsageError
from .data import NOTUMOR, open_image, read_splits
from .folders import is_hidden, visible_dirs
from .folds import correlated_pairs, image_hashes, near_duplicate_groups, normalised_thumbnail
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


def copies_of_dataset(images: list[bytes], dataset: str) -> dict[int, str]:
    """{index in `images`: a `file` of `dataset`} for each slice that prepare_dataset.py would group with slices of
    the dataset (any split): equal average hashes, perceptual hashes within a few bits, or normalised thumbnails
    correlated above 0.9 as they are or mirrored, chained through the other slices too (not its links of
    consecutively numbered figshare slices, which need the sources' file names). A model trained on the dataset has
    seen these slices (or their neighbours) in training: scored, they would flatter it."""
    splits, _ = read_splits(dataset)
    files = [
        file
        for name, split in splits.items()
        for file in split.get("file") or [f"{name} row {i}" for i in range(len(split["image"]))]
    ]
    print(f"Looking for copies of {dataset}'s {len(files):,} slices among {len(images):,}...", file=sys.stderr)

    def fingerprint(entry) -> tuple:
        image = open_image(entry)
        return image_hashes(image), normalised_thumbnail(image)

    prints = [fingerprint(image) for split in splits.values() for image in split["image"]]
    prints += [fingerprint(image) for image in images]
    hashes, thumbnails = zip(*prints, strict=True)
    group = near_duplicate_groups(hashes, more_links=[correlated_pairs(thumbnails)])
    file_of_group = {}
    for file, number in zip(files, group[: len(files)], strict=True):
        file_of_group.setdefault(number, file)
    return {index: file_of_group[number] for index, number in enumerate(group[len(files) :]) if number in file_of_group}
