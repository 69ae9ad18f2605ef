"""Turn a folder tree of brain-MRI slices into a Hugging Face dataset folder with leak-free folds.

    python prepare_dataset.py SRC [SRC ...] OUT [--folds 5] [--seed 0] [--exclude LIST] [--push-to-hub REPO_ID]

SRC holds one folder per class, or Kaggle-style ``Training/<class>/`` and ``Testing/<class>/`` subtrees, which
become the splits ``train`` and ``test`` (folds are made inside ``train``). Files directly under SRC (or beside the
class folders), hidden files and folders, and the __MACOSX folder that unzipping a macOS archive leaves are
ignored; every other file must be an image. Several SRC folders, each with the same class folders, make one
dataset: each file is then named ``<SRC folder name>/<path in SRC>``, and the groups and folds span all of them.
OUT becomes a Hub dataset repository folder: ``data/<split>-0000i-of-0000n.parquet`` holding the original image
bytes, and a README.md dataset card. Every file is decoded before anything is written; if one is bad, nothing is.

``--exclude LIST`` leaves out the files LIST names (one ``<SRC folder name>/<path in SRC>`` per line, ``#``
comments give the reason; for instance slices whose label a look contradicts). They are left out after the
groups and folds are made, so every other file keeps the fold it has in the full dataset and runs on both
compare fold by fold.

The near-duplicate grouping and the folds come from ``brain_resnet.folds``, which train.py uses too
for a dataset without fold columns.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import os
import re
import shutil
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError
from tqdm import tqdm

from brain_resnet.folders import is_hidden, visible_dirs
from brain_resnet.folds import (
    FOLD_COLUMNS,
    HASH_SIZE,
    MAX_NEIGHBOUR_PHASH_DISTANCE,
    MIN_NEIGHBOUR_CORRELATION,
    MIN_THUMBNAIL_CORRELATION,
    NO_FOLD,
    PHASH_MAX_DISTANCE,
    SHARE_TOLERANCE,
    THUMBNAIL_SIZE,
    assign_folds,
    check_hash,
    class_share_deviation,
    correlated_pairs,
    image_hashes,
    near_duplicate_groups,
    normalised_thumbnail,
    numbered_neighbour_pairs,
    read_exclusions,
    split_look_alikes,
)

if TYPE_CHECKING:
    import datasets

SPLIT_FOLDERS = {"training": "train", "testing": "test"}
MAX_SHARD_BYTES = 500_000_000  # as datasets' push_to_hub
FILE_NUMBER = re.compile(r"-(\d+)\.[^.]+$")  # figshare-0017.jpg: 17


@dataclass(frozen=True)
class KnownSource:
    """A data source recognised by its file-name prefix (``figshare-0001.jpg``)."""

    title: str
    url: str
    license: str | None  # Hub license id; None where no license could be verified
    terms: str
    note: str = ""
    # Files are numbered (figshare-0017.jpg) patient by patient within a class, so look-alike neighbours
    # are adjacent slices of one patient.
    numbered_by_patient: bool = False


KNOWN_SOURCES = {
    "figshare": KnownSource(
        title="figshare brain tumor dataset (Cheng et al.), T1-weighted contrast-enhanced slices",
        url="https://doi.org/10.6084/m9.figshare.1512427",
        license="cc-by-4.0",
        terms="CC BY 4.0. Cite Cheng et al., “Enhanced Performance of Brain Tumor Classification via Tumor "
        "Region Augmentation and Partition” (PLoS ONE 2015) and “Retrieval of Brain Tumors by Adaptive "
        "Spatial Pooling and Fisher Vector Representation” (PLoS ONE 2016).",
        note="The figshare set has 233 patients (about 13 slices each). Patient ids are not part of these "
        "files, but figshare numbers run patient by patient within a class: consecutive numbers of one class "
        "whose thumbnails correlate share a group (see How the folds were made).",
        numbered_by_patient=True,
    ),
    "br35h": KnownSource(
        title="Br35H :: Brain Tumor Detection 2020 (Ahmed Hamada, Kaggle)",
        url="https://www.kaggle.com/datasets/ahmedhamada0/brain-tumor-detection",
        license=None,
        terms="Published on Kaggle by Ahmed Hamada; no license was verified for this card. Check the "
        "terms on its Kaggle page before redistributing.",
    ),
    "sartaj": KnownSource(
        title="Brain Tumor Classification (MRI) (Sartaj Bhuvaji et al., 2020, Kaggle)",
        url="https://www.kaggle.com/datasets/sartajbhuvaji/brain-tumor-classification-mri",
        license=None,
        terms="Published on Kaggle and GitHub by Sartaj Bhuvaji et al.; no license was verified for this card. "
        "Check the terms on its Kaggle page before redistributing.",
        note="The slices meant not to be copies of figshare or Br35H slices (brain-tumor-mri-sartaj); 64 copies of "
        "figshare slices remain, each in one near-duplicate group with its original; "
        "`sartaj-Tr-gl-0012.jpg` is the 12th file of that set's Training/glioma_tumor folder.",
    ),
}


# ---------------------------------------------------------------- reading the source tree
@dataclass(frozen=True)
class Entry:
    """One file found under SRC."""

    split: str
    label: str
    file: str  # path relative to SRC, with forward slashes
    path: Path
    src_name: str  # the SRC folder's name: the source of files with no known name prefix


@dataclass(frozen=True)
class Slice:
    """One fully decoded image file."""

    entry: Entry
    data: bytes
    digest: str
    hashes: np.ndarray
    thumbnail: np.ndarray
    check: bytes  # check_hash, to measure the grouping by
    size: tuple[int, int]
    mode: str


def find_images(src: Path) -> tuple[list[Entry], list[str]]:
    """Files of each class folder, in (split, class, path) order, and the loose files that were ignored.

    Raises SystemExit with a message for a missing SRC, no class folders, an empty class folder,
    Training/Testing beside other folders, or splits with different classes.
    """
    if not src.is_dir():
        raise SystemExit(f"error: SRC {src} does not exist or is not a folder")
    top = visible_dirs(src)
    split_dirs = [d for d in top if d.name.lower() in SPLIT_FOLDERS]
    if split_dirs and len(split_dirs) != len(top):
        others = ", ".join(d.name for d in top if d not in split_dirs)
        raise SystemExit(f"error: {src} mixes Training/Testing folders with other folders ({others})")
    roots = {SPLIT_FOLDERS[d.name.lower()]: d for d in split_dirs} or {"train": src}
    ignored = [
        _relative(p, src)
        for folder in dict.fromkeys([src, *roots.values()])
        for p in sorted(folder.iterdir())
        if p.is_file() and not is_hidden(p, folder)
    ]
    entries, classes_of = [], {}
    for split in sorted(roots, key=list(SPLIT_FOLDERS.values()).index):
        root = roots[split]
        class_dirs = visible_dirs(root)
        if not class_dirs:
            raise SystemExit(f"error: {root} has no class folders")
        classes_of[split] = [d.name for d in class_dirs]
        for class_dir in class_dirs:
            files = sorted(p for p in class_dir.rglob("*") if p.is_file() and not is_hidden(p, class_dir))
            if not files:
                raise SystemExit(f"error: class folder {class_dir} holds no files")
            entries += [Entry(split, class_dir.name, _relative(p, src), p, src.resolve().name) for p in files]
    if len({tuple(names) for names in classes_of.values()}) > 1:
        listing = "; ".join(f"{split}: {', '.join(names)}" for split, names in classes_of.items())
        raise SystemExit(f"error: the splits have different class folders ({listing})")
    return entries, ignored


def find_all_images(srcs: Sequence[Path]) -> tuple[list[Entry], list[str]]:
    """find_images of each SRC; with several, each file path starts with its SRC folder's name.

    Raises SystemExit with a message when two SRC folders share a name or have different class folders.
    """
    if len(srcs) == 1:
        return find_images(srcs[0])
    names = [src.resolve().name for src in srcs]
    repeated = sorted(name for name, n in Counter(names).items() if n > 1)
    if repeated:
        raise SystemExit(f"error: several SRC folders are named {', '.join(repeated)}; file names would collide")
    entries, ignored, classes_of = [], [], {}
    for src, name in zip(srcs, names, strict=True):
        found, loose = find_images(src)
        classes_of[name] = sorted({e.label for e in found})
        entries += [replace(e, file=f"{name}/{e.file}") for e in found]
        ignored += [f"{name}/{file}" for file in loose]
    if len({tuple(classes) for classes in classes_of.values()}) > 1:
        listing = "; ".join(f"{name}: {', '.join(classes)}" for name, classes in classes_of.items())
        raise SystemExit(f"error: the SRC folders have different class folders ({listing})")
    return entries, ignored


def _relative(path: Path, src: Path) -> str:
    return path.relative_to(src).as_posix()


def _refuse_truncated_images() -> None:
    # A truncated file must fail to load, not decode padded with grey (PIL's default, made explicit).
    ImageFile.LOAD_TRUNCATED_IMAGES = False


def read_slice(entry: Entry) -> Slice | str:
    """Read and fully decode one file: a Slice, or a message naming the file when it is no readable image."""
    try:
        data = entry.path.read_bytes()
        if not data:
            return f"{entry.file}: empty file"
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            digest = hashlib.sha256(data).hexdigest()
            hashes, thumbnail, check = image_hashes(img), normalised_thumbnail(img), check_hash(img)
            return Slice(entry, data, digest, hashes, thumbnail, check, img.size, img.mode)
    except UnidentifiedImageError:
        return f"{entry.file}: not an image PIL can read"
    except Exception as exc:  # PIL reports damage as OSError, SyntaxError, ValueError, ...
        return f"{entry.file}: {exc}"


def decode_all(entries: list[Entry], workers: int | None = None) -> list[Slice]:
    """Decode every file in parallel processes; SystemExit naming each bad file if any is bad."""
    with ProcessPoolExecutor(workers or os.cpu_count(), initializer=_refuse_truncated_images) as pool:
        results = list(
            tqdm(pool.map(read_slice, entries, chunksize=16), total=len(entries), desc="Decoding", unit="img")
        )
    bad = [r for r in results if isinstance(r, str)]
    if bad:
        raise SystemExit(
            f"error: {len(bad)} of {len(results)} files are not readable images; nothing was written:\n  "
            + "\n  ".join(bad)
        )
    return results


# ---------------------------------------------------------------- columns
def source_of(entry: Entry) -> str:
    """Where a file comes from: its known file-name prefix (figshare-0001.jpg: figshare), else its SRC folder."""
    name = PurePosixPath(entry.file).name.lower()
    return next((prefix for prefix in KNOWN_SOURCES if name.startswith(prefix + "-")), entry.src_name)


def patient_number(entry: Entry, source: str) -> tuple[tuple[str, str], int] | None:
    """((source, class), file number) for a file of a source numbered patient by patient, else None."""
    known = KNOWN_SOURCES.get(source)
    number = FILE_NUMBER.search(PurePosixPath(entry.file).name)
    if known is None or not known.numbered_by_patient or number is None:
        return None
    return (source, entry.label), int(number[1])


@dataclass
class Table:
    """Every column of every image, in file order, and what the summary and card are built from."""

    classes: list[str]
    slices: list[Slice]
    split: np.ndarray
    label: np.ndarray
    source: list[str]
    group: np.ndarray
    fold: np.ndarray
    fold_random: np.ndarray
    n_folds: int
    seed: int
    excluded: dict[str, str] = field(default_factory=dict)  # file left out by --exclude: the reason given

    def columns(self, split: str) -> dict[str, list]:
        rows = np.flatnonzero(self.split == split)
        return {
            "image": [{"bytes": self.slices[i].data, "path": self.slices[i].entry.file} for i in rows],
            "label": self.label[rows].tolist(),
            "file": [self.slices[i].entry.file for i in rows],
            "source": [self.source[i] for i in rows],
            "group": self.group[rows].tolist(),
            **{column: getattr(self, column)[rows].tolist() for column in FOLD_COLUMNS.values()},
        }

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(self.split.tolist()))


def build_table(slices: list[Slice], n_folds: int, seed: int) -> Table:
    """Label, source, near-duplicate group and both fold columns for every image."""
    classes = sorted({s.entry.label for s in slices})
    split = np.array([s.entry.split for s in slices])
    label = np.array([classes.index(s.entry.label) for s in slices])
    # Grouped over all splits, so the card can tell which test images have a near-duplicate in train.
    source = [source_of(s.entry) for s in slices]
    thumbnails = [s.thumbnail for s in slices]
    look_alikes = correlated_pairs(thumbnails)
    numbers = [patient_number(s.entry, src) for s, src in zip(slices, source, strict=True)]
    hashes = [s.hashes for s in slices]
    neighbours = numbered_neighbour_pairs(numbers, hashes, thumbnails)
    group = np.array(near_duplicate_groups(hashes, more_links=[look_alikes, neighbours]))
    train = split == "train"
    for name, count in zip(classes, np.bincount(label[train], minlength=len(classes)), strict=True):
        if count < n_folds:
            raise SystemExit(f"error: class {name} has {count} training images, fewer than --folds {n_folds}")
    # Stratified by class within each source, so that one source's rows alone (train.py --sources) still make
    # stratified folds. Codes keep the class order: one source alone gets exactly the folds of its classes.
    source_codes = np.unique(source, return_inverse=True)[1]
    strata = label * (source_codes.max() + 1) + source_codes
    try:
        fold_train, fold_random_train = assign_folds(strata[train], group[train], n_folds, seed)
    except ValueError as exc:  # e.g. fewer near-duplicate groups than folds
        raise SystemExit(f"error: cannot make {n_folds} folds: {exc}") from None
    fold, fold_random = np.full(len(slices), NO_FOLD), np.full(len(slices), NO_FOLD)
    fold[train], fold_random[train] = fold_train, fold_random_train
    return Table(classes, slices, split, label, source, group, fold, fold_random, n_folds, seed)


def exclusions(path: Path, entries: list[Entry], srcs: Sequence[Path]) -> dict[str, str]:
    """The `file` of each entry the --exclude list at `path` names, with its reason. Names under a folder that is
    not one of the SRCs are someone else's (a list can cover several sources); a name under one of them that is
    not there is refused, since a misspelt name would leave its file in."""
    try:
        listed = read_exclusions(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"error: cannot read --exclude {path}: {exc}") from None
    names = [src.resolve().name for src in srcs]
    found = {e.file: e.file for e in entries}  # as the `file` column names them (train.py --exclude's form)
    ours = set(names)  # the first folder of a name that must be here
    if len(srcs) == 1:  # one SRC: `file` omits the folder's name, which a list covering several sources has
        found |= {f"{names[0]}/{e.file}": e.file for e in entries}
        ours |= {e.file.split("/")[0] for e in entries}  # its class (or split) folders: the `file` form
    missing = [name for name in listed if name.split("/")[0] in ours and name not in found]
    if missing:
        raise SystemExit(
            f"error: --exclude names {len(missing)} file(s) that are not in SRC; nothing was written:\n  "
            + "\n  ".join(missing)
        )
    elsewhere = [name for name in listed if name not in found]
    if elsewhere:
        print(f"--exclude: {len(elsewhere)} listed file(s) are under none of the SRC folders here, e.g. {elsewhere[0]}")
    return {found[name]: reason for name, reason in listed.items() if name in found}


def without_excluded(table: Table, excluded: dict[str, str]) -> Table:
    """The table less the excluded files, every other file keeping its group and folds."""
    keep = np.array([s.entry.file not in excluded for s in table.slices], dtype=bool)
    rows = np.flatnonzero(keep)
    return replace(
        table,
        slices=[table.slices[i] for i in rows],
        split=table.split[keep],
        label=table.label[keep],
        source=[table.source[i] for i in rows],
        group=table.group[keep],
        fold=table.fold[keep],
        fold_random=table.fold_random[keep],
        excluded=excluded,
    )


# ---------------------------------------------------------------- summary (printed and in the card)
def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f"{v:,}" if isinstance(v, int) else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fold_counts(table: Table, protocol: str) -> str:
    """Images per class (rows) and fold (columns) of the train split."""
    train = table.split == "train"
    folds = getattr(table, protocol)[train]
    labels = table.label[train]
    rows = [
        [name, *(int(np.sum((labels == c) & (folds == k))) for k in range(table.n_folds)), int(np.sum(labels == c))]
        for c, name in enumerate(table.classes)
    ]
    totals = [int(np.sum(folds == k)) for k in range(table.n_folds)]
    rows.append(["**all**", *totals, int(train.sum())])
    return markdown_table(["class", *(f"fold {k}" for k in range(table.n_folds)), "total"], rows)


def split_counts(table: Table) -> str:
    rows = [
        [name, *(int(np.sum((table.label == c) & (table.split == s))) for s in table.splits)]
        for c, name in enumerate(table.classes)
    ]
    rows.append(["**all**", *(int(np.sum(table.split == s)) for s in table.splits)])
    return markdown_table(["class", *table.splits], rows)


@dataclass
class GroupStats:
    clusters: int  # groups of two or more images
    images: int  # images in those groups
    largest: int
    mixed_sets: list[list[str]]  # the files of each cluster holding more than one class
    groups: int  # all groups, singletons included
    identical: list[list[str]]  # sets of byte-identical files
    test_with_train_twin: int  # test images sharing a group with a train image
    split_check_sets: list[list[str]]  # the files of each train set of one check_hash split across `fold`s
    check_sets: int  # train sets of 2+ images with one check_hash

    @property
    def mixed_classes(self) -> int:
        return len(self.mixed_sets)


def group_stats(table: Table) -> GroupStats:
    sizes = Counter(table.group.tolist())
    multi = [g for g, size in sizes.items() if size > 1]
    mixed = [g for g in multi if len(set(table.label[table.group == g].tolist())) > 1]
    by_digest = defaultdict(list)
    for s in table.slices:
        by_digest[s.digest].append(s.entry.file)
    train_groups = set(table.group[table.split == "train"].tolist())
    test_groups = table.group[table.split == "test"].tolist()
    train = np.flatnonzero(table.split == "train")
    split_sets, check_sets = split_look_alikes([table.slices[i].check for i in train], table.fold[train])
    return GroupStats(
        clusters=len(multi),
        images=sum(sizes[g] for g in multi),
        largest=max(sizes.values()),
        mixed_sets=[[table.slices[i].entry.file for i in np.flatnonzero(table.group == g)] for g in mixed],
        groups=len(sizes),
        identical=[files for files in by_digest.values() if len(files) > 1],
        test_with_train_twin=sum(g in train_groups for g in test_groups),
        split_check_sets=[[table.slices[train[i]].entry.file for i in positions] for positions in split_sets],
        check_sets=check_sets,
    )


def identical_text(stats: GroupStats, separator: str) -> str:
    if not stats.identical:
        return "none"
    sets = separator.join(" = ".join(files) for files in stats.identical)
    return f"{len(stats.identical)} set(s), each kept in one group:{separator}{sets}"


def check_text(stats: GroupStats) -> str:
    split = len(stats.split_check_sets)
    text = (
        f"Independent check: {split} of {stats.check_sets:,} sets of train images with one "
        f"{HASH_SIZE}x{HASH_SIZE} average hash of a bilinear shrink ({100 * split / max(stats.check_sets, 1):.1f}%) "
        "fall in different `fold`s"
    )
    if not split:
        return text + "."
    # Named, so that anyone can look: adjacent slices of one patient would be a leak, other look-alikes are not.
    return text + ": " + "; ".join(" + ".join(files) for files in stats.split_check_sets) + "."


def mixed_text(stats: GroupStats) -> str:
    """The clusters that mix classes, named: one slice under two labels, or different patients that look alike."""
    if not stats.mixed_sets:
        return ""
    return (
        "Clusters mixing classes (the same slice under two labels, or look-alikes of different patients; each kept "
        "in one fold): " + "; ".join(" + ".join(files) for files in stats.mixed_sets) + "."
    )


def deviations(table: Table) -> dict[str, float]:
    train = table.split == "train"
    return {p: class_share_deviation(table.label[train], getattr(table, p)[train]) for p in FOLD_COLUMNS.values()}


def summary(table: Table, stats: GroupStats) -> str:
    dev = deviations(table)
    lines = [
        split_counts(table),
        "",
        "train, `fold` (stratified, near-duplicate groups kept whole):",
        fold_counts(table, "fold"),
        "",
        "train, `fold_random` (plain stratified):",
        fold_counts(table, "fold_random"),
        "",
        f"Class share per fold vs overall, max deviation: fold {dev['fold']:.2f} points, "
        f"fold_random {dev['fold_random']:.2f} points (target ±{SHARE_TOLERANCE}).",
        f"Near-duplicate clusters: {stats.clusters:,} clusters of 2+ images hold {stats.images:,} images "
        f"(largest {stats.largest}, {stats.mixed_classes} mixing classes); {stats.groups:,} groups in all.",
        "Byte-identical files: " + identical_text(stats, "\n  "),
        check_text(stats),
    ]
    if stats.mixed_sets:
        lines.append(mixed_text(stats))
    if "test" in table.splits:
        lines.append(f"Test images with a near-duplicate in train: {stats.test_with_train_twin:,}.")
    if table.excluded:
        lines.append(f"Left out (--exclude): {len(table.excluded):,} files, after the folds were made.")
    if max(dev.values()) > SHARE_TOLERANCE:
        lines.append(f"WARNING: a class share is off by more than {SHARE_TOLERANCE} points in some fold.")
    return "\n".join(lines)


# ---------------------------------------------------------------- dataset card
def source_rows(table: Table) -> list[list[object]]:
    rows = []
    for source in sorted(set(table.source)):
        picked = [s for s, src in zip(table.slices, table.source, strict=True) if src == source]
        classes = Counter(s.entry.label for s in picked)
        modes = Counter(s.mode for s in picked)
        sizes = {s.size for s in picked}
        size = "{}×{}".format(*sizes.pop()) if len(sizes) == 1 else f"{len(sizes)} sizes"
        known = KNOWN_SOURCES.get(source)
        rows.append(
            [
                source,
                len(picked),
                ", ".join(f"{name} {n:,}" for name, n in sorted(classes.items())),
                f"{size}, modes " + ", ".join(f"{m} {n:,}" for m, n in sorted(modes.items())),
                f"[{known.title}]({known.url})" if known else "not known to prepare_dataset.py",
            ]
        )
    return rows


def confound_note(table: Table) -> list[str]:
    """A caveat when a known source alone supplies its classes, so that source and label coincide."""
    classes_of = defaultdict(set)
    for source, label in zip(table.source, table.label.tolist(), strict=True):
        classes_of[source].add(table.classes[label])
    alone = [
        f"{', '.join(sorted(classes))} only from {source}"
        for source, classes in sorted(classes_of.items())
        if source in KNOWN_SOURCES
        and len(classes_of) > 1
        and not classes & set().union(*(c for s, c in classes_of.items() if s != source))
    ]
    if not alone:
        return []
    return [
        f"Source and label are confounded: {'; '.join(alone)}. A model can separate these classes by "
        "source traits (image size, mode, contrast, framing; see Sources) rather than anatomy: check "
        "per-source behaviour before reading accuracy as tumor detection."
    ]


def license_fields(table: Table) -> dict[str, str]:
    licenses = {KNOWN_SOURCES[s].license if s in KNOWN_SOURCES else None for s in set(table.source)}
    if len(licenses) == 1 and None not in licenses:
        return {"license": licenses.pop()}
    return {"license": "other", "license_name": "mixed-source-terms"}


def size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]
    return next((name for bound, name in bounds if n < bound), "n>1M")


def card_yaml(table: Table, split_bytes: dict[str, tuple[int, int]]) -> str:
    """YAML header: configs, features, splits, task, license, size, tags."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    card = DatasetCardData(
        **license_fields(table),
        task_categories=["image-classification"],
        tags=["medical", "mri", "brain-tumor", "cross-validation"],
        size_categories=[size_category(len(table.slices))],
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": s, "path": f"data/{s}-*"} for s in table.splits],
            }
        ],
    )
    splits = SplitDict()
    for name, (num_bytes, _) in split_bytes.items():
        splits.add(SplitInfo(name=name, num_bytes=num_bytes, num_examples=int(np.sum(table.split == name))))
    info = DatasetInfo(
        features=dataset_features(table.classes),
        splits=splits,
        download_size=sum(parquet for _, parquet in split_bytes.values()),
        dataset_size=sum(arrow for arrow, _ in split_bytes.values()),
    )
    DatasetInfosDict({"default": info}).to_dataset_card_data(card)
    return card.to_yaml()


def card_text(table: Table, stats: GroupStats, name: str, load_as: str) -> str:
    """Markdown body of the dataset card: sources, counts, columns, how folds were made, caveats."""
    dev = deviations(table)
    known = [KNOWN_SOURCES[s] for s in sorted(set(table.source)) if s in KNOWN_SOURCES]
    test_note = [
        f"- {stats.test_with_train_twin:,} test images share a near-duplicate group with train images, so "
        "the given train/test split leaks; the `group` column spans both splits to show it."
    ]
    lines = [
        f"# {name}",
        "",
        f"{len(table.slices):,} brain MRI slices labelled {', '.join(table.classes)}, as parquet shards with "
        "the original image bytes (not re-encoded), with two sets of cross-validation folds: "
        "`fold`, leak-free, and `fold_random`, plain stratified. Made by `prepare_dataset.py` "
        f"(`--folds {table.n_folds} --seed {table.seed}`). Research only; not for clinical use.",
        "",
        "## Sources",
        "",
        markdown_table(["source", "images", "classes", "image sizes and modes", "origin"], source_rows(table)),
        "",
        *(f"- {k.title}: {k.note}" for k in known if k.note),
        "",
        "## Counts",
        "",
        split_counts(table),
        "",
        "Train images per fold, `fold` (stratified, near-duplicate groups kept whole):",
        "",
        fold_counts(table, "fold"),
        "",
        "Train images per fold, `fold_random` (plain stratified):",
        "",
        fold_counts(table, "fold_random"),
        "",
        "## Columns",
        "",
        "- `image`: the source file's bytes as they were.",
        f"- `label`: class, ClassLabel with names sorted ({', '.join(table.classes)}).",
        "- `file`: path of the file relative to the source folder (after the source folder's name, when "
        "several were combined).",
        "- `source`: origin, from the file-name prefix (`figshare-`, `br35h-`, `sartaj-`), else the name of the "
        "source folder the file came from.",
        "- `group`: near-duplicate cluster id (images in no cluster have a group of their own).",
        f"- `fold`, `fold_random`: cross-validation fold 0..{table.n_folds - 1} of train images; "
        f"{NO_FOLD} in the test split.",
        "",
        "## How the folds were made",
        "",
        f"Each image gets a {HASH_SIZE}x{HASH_SIZE} average hash and a {HASH_SIZE}x{HASH_SIZE} DCT perceptual "
        f"hash (imagehash), and a normalised {THUMBNAIL_SIZE}x{THUMBNAIL_SIZE} thumbnail (cropped to the bright "
        "part, histogram-equalised, so that re-windowed and re-framed copies match). Two images are linked when "
        f"their average hashes are equal, their perceptual hashes differ in at most {PHASH_MAX_DISTANCE} of "
        f"{HASH_SIZE**2} bits, their thumbnails correlate above {MIN_THUMBNAIL_CORRELATION} as they are or "
        "mirrored (a flipped copy, also across sources), their bytes are identical, or they are consecutively "
        "numbered slices of one class from a source numbered patient by patient (figshare) whose thumbnails "
        f"correlate above {MIN_NEIGHBOUR_CORRELATION} or whose perceptual hashes differ in at most "
        f"{MAX_NEIGHBOUR_PHASH_DISTANCE} bits (adjacent slices of one patient); a group is a connected "
        "set of links. The thresholds were chosen by measurement on brain-tumor-mri-4k: links between different "
        "classes (so different patients) first appear at 36 perceptual-hash bits and a thumbnail correlation "
        f"of 0.898, and groups stay small. Here: {stats.clusters:,} clusters of 2+ images hold "
        f"{stats.images:,} images (largest {stats.largest}, {stats.mixed_classes} mixing classes). {mixed_text(stats)}",
        "",
        f"{check_text(stats)} That hash is no link of the grouping, so it measures the grouping from outside; "
        "some of its sets are look-alikes of different patients (even of different sources), which no "
        "grouping can keep whole without joining unrelated slices.",
        "",
        f"`fold` comes from scikit-learn's `StratifiedGroupKFold(n_splits={table.n_folds}, shuffle=True, "
        f"random_state={table.seed})`: no group is split across folds, and each class's share in each fold "
        f"is within {dev['fold']:.2f} points of its share overall. `fold_random` comes from "
        f"`StratifiedKFold` with the same settings (max deviation {dev['fold_random']:.2f} points): the "
        "protocol of the improved-ResNet34 paper (arXiv 2512.03751), kept so results can be compared, "
        "with near-duplicates free to fall into different folds. Both are the same for the same seed.",
        "",
        *excluded_section(table),
        "## Caveats",
        "",
        *(f"- {note}" for note in confound_note(table)),
        "- Near-duplicates: adjacent slices of one patient, and re-saved copies of one slice, look alike. "
        "`fold` keeps the ones hashing finds together; it catches look-alike images, not patients, so "
        "slices of one patient that look different can still sit in different folds. `fold_random` "
        "ignores groups and so leaks near-duplicates between training and validation.",
        f"- Byte-identical files: {identical_text(stats, ' ')}.",
        *(test_note if "test" in table.splits else []),
        "",
        "## Usage",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'ds = load_dataset("{load_as}", split="train")',
        "k = 0  # validation fold",
        'train = ds.filter(lambda f: f != k, input_columns="fold")',
        'val = ds.filter(lambda f: f == k, input_columns="fold")',
        "```",
        "",
        "## License",
        "",
        *(f"- {k.title}: {k.terms}" for k in known),
        *(f"- {s}: not known to prepare_dataset.py; add its origin and terms." for s in unknown_sources(table)),
    ]
    return "\n".join(lines) + "\n"


def excluded_section(table: Table) -> list[str]:
    """The card's list of the files --exclude left out, with the reason given for each."""
    if not table.excluded:
        return []
    return [
        "## Left out",
        "",
        f"{len(table.excluded):,} files of the source folders are not in this dataset (`prepare_dataset.py "
        "--exclude`). They were left out after the groups and folds were made, so every other file keeps the "
        "fold it has in the dataset made without `--exclude`.",
        "",
        *(f"- `{file}`: {reason or 'no reason given'}" for file, reason in sorted(table.excluded.items())),
        "",
    ]


def unknown_sources(table: Table) -> list[str]:
    return sorted(set(table.source) - set(KNOWN_SOURCES))


# ---------------------------------------------------------------- writing
def dataset_features(classes: Sequence[str]) -> datasets.Features:
    """The datasets.Features of the prepared dataset."""
    from datasets import ClassLabel, Features, Value
    from datasets import Image as ImageFeature

    return Features(
        {
            "image": ImageFeature(),
            "label": ClassLabel(names=list(classes)),
            "file": Value("string"),
            "source": Value("string"),
            "group": Value("int32"),
            **{column: Value("int32") for column in FOLD_COLUMNS.values()},
        }
    )


def write_hub_folder(table: Table, folder: Path, card_body: str) -> None:
    """Parquet shards per split under folder/data, then README.md (YAML header + card_body)."""
    import datasets

    features = dataset_features(table.classes)
    split_bytes = {}
    (folder / "data").mkdir()
    for split in table.splits:
        ds = datasets.Dataset.from_dict(table.columns(split), features=features)
        shards = max(1, math.ceil(ds.data.nbytes / MAX_SHARD_BYTES))
        parquet_bytes = 0
        for i in range(shards):
            path = folder / "data" / f"{split}-{i:05d}-of-{shards:05d}.parquet"
            ds.shard(shards, i, contiguous=True).to_parquet(path)
            parquet_bytes += path.stat().st_size
        split_bytes[split] = (ds.data.nbytes, parquet_bytes)
    card = f"---\n{card_yaml(table, split_bytes).rstrip()}\n---\n\n{card_body}"
    (folder / "README.md").write_text(card, encoding="utf-8")


def write_atomically(out: Path, fill: Callable[[Path], None]) -> None:
    """Let ``fill(folder)`` build a sibling temporary folder, then rename it to ``out``; on failure remove it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    partial.mkdir()
    try:
        fill(partial)
        if out.exists():
            raise SystemExit(f"error: OUT {out} appeared while preparing; nothing was written")
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def push_folder(folder: Path, repo_id: str) -> None:
    """Upload the prepared folder as the Hub dataset repository ``repo_id`` (needs a write token)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
    api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="dataset")


# ---------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "src",
        metavar="SRC",
        type=Path,
        nargs="+",
        help="class folders, or Training/ and Testing/ of them; several combine",
    )
    parser.add_argument("out", metavar="OUT", type=Path, help="new folder for the Hub dataset (must not exist)")
    parser.add_argument("--folds", type=int, default=5, help="number of cross-validation folds (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of both fold assignments (default 0)")
    parser.add_argument(
        "--exclude",
        metavar="LIST",
        type=Path,
        help="text file naming files to leave out, one <SRC folder name>/<path in SRC> per line (# comments: "
        "the reason); they leave after the folds are made, so the other files keep their folds",
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload OUT as this Hub dataset repository")
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error("--folds must be at least 2")
    if args.out.exists() or args.out.is_symlink():
        parser.error(f"OUT {args.out} already exists; pick a new folder or remove it")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    entries, ignored = find_all_images(args.src)
    excluded = exclusions(args.exclude, entries, args.src) if args.exclude else {}
    table = without_excluded(build_table(decode_all(entries), args.folds, args.seed), excluded)
    stats = group_stats(table)
    body = card_text(table, stats, args.out.name, args.push_to_hub or f"path/to/{args.out.name}")
    write_atomically(args.out, lambda folder: write_hub_folder(table, folder, body))
    if ignored:
        print(f"Ignored {len(ignored)} file(s) outside class folders: {', '.join(ignored)}")
    print(summary(table, stats))
    print(f"Wrote {args.out} ({len(table.slices):,} images) in {time.perf_counter() - started:.1f} s.")
    if args.push_to_hub:
        try:
            push_folder(args.out, args.push_to_hub)
        except Exception as exc:  # network or auth: the folder is complete, so say how to retry
            raise SystemExit(
                f"error: upload to {args.push_to_hub} failed ({exc}); {args.out} is complete, upload it with "
                f"`hf upload {args.push_to_hub} {args.out} --repo-type dataset`"
            ) from None
        print(f"Uploaded to https://huggingface.co/datasets/{args.push_to_hub}")


if __name__ == "__main__":
    main(sys.argv[1:])
