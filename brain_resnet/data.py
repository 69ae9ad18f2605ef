"""A prepared dataset as train.py and evaluation.py use it: its splits read (with `datasets`, or pyarrow alone),
the protocol's folds, every image decoded once through the image processor, and the tensors on the device."""

import io
import json
import multiprocessing
import re
import sys
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .augment import (
    LATERAL_TUMOUR_CLASSES,
    MIN_MIRROR_SYMMETRY,
    grad_cam_lesions,
    left_right_symmetry,
    tumour_sides,
)
from .cli import UsageError
from .folds import FOLD_COLUMNS, NO_FOLD, assign_folds, image_hashes, near_duplicate_groups, read_exclusions
from .modeling import BrainResNetImageProcessor
from .runs import FULL

DATASET_COLUMNS = ("image", "label", "file", "source", "group", *FOLD_COLUMNS.values())
# Training crops are cut from a cache this much larger than --image-size, so that zooming in keeps detail.
CACHE_MARGIN = 1.15
NOTUMOR = "notumor"  # the label of healthy slices
# The label, in a Table, of a slice that shows a tumour of no known class (train.py --untyped-tumors): it trains as
# "a tumour", any class but notumor, and no 4-class score counts it.
ANY_TUMOUR = -1
BACKGROUND_LEVEL = 10  # of 255: darker pixels of a cached slice are background


@dataclass
class Table:
    """The rows to train and evaluate on, images still encoded: train rows, then test rows (fold NO_FOLD)."""

    images: list
    labels: np.ndarray
    folds: np.ndarray
    sources: list[str] | None
    class_names: list[str]
    groups: np.ndarray  # near-duplicate group of each row; each row its own where the dataset has no group column


def read_splits(dataset: str) -> tuple[dict[str, dict[str, list]], list[str] | None]:
    """Each split's columns as lists (images left encoded) and the label names, if the dataset declares them."""
    try:
        import datasets
    except ImportError:  # the GPU machine may lack it: a local parquet folder still loads
        if Path(dataset).is_dir():
            return read_parquet_folder(Path(dataset))
        raise UsageError(f"loading the Hub dataset {dataset!r} needs the datasets package") from None
    path = Path(dataset).expanduser()
    # A path, not a Hub id ("owner/name"): one that starts like a path, has more parts than an id, or whose first
    # part is a folder here (data/brain-tumor-mri-4K); else datasets would retry the Hub and fall back to any
    # cached dataset of that name.
    looks_local = dataset.startswith((".", "/", "~")) or len(path.parts) > 2 or Path(*path.parts[:1]).is_dir()
    if looks_local and not path.exists():
        raise UsageError(f"--dataset {dataset}: no such folder")
    try:
        splits = datasets.load_dataset(dataset)
    except Exception as error:  # a wrong id or path, no network, unreadable files: all about --dataset
        raise UsageError(f"cannot load dataset {dataset!r}: {type(error).__name__}: {error}") from None
    columns, names = {}, None
    for split_name, split in splits.items():
        split = split.select_columns([c for c in DATASET_COLUMNS if c in split.column_names])
        if isinstance(split.features.get("image"), datasets.Image):
            split = split.cast_column("image", datasets.Image(decode=False))  # bytes: decoded once, below
        if isinstance(split.features.get("label"), datasets.ClassLabel):
            names = list(split.features["label"].names)
        columns[split_name] = split.to_dict()
    return columns, names


def read_parquet_folder(folder: Path) -> tuple[dict[str, dict[str, list]], list[str] | None]:
    """read_splits without `datasets`: pyarrow reads a Hub-layout folder (data/<split>-00000-of-00001.parquet)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError("loading a dataset needs the datasets package (or pyarrow for a parquet folder)") from None
    files = defaultdict(list)
    for file in sorted(folder.rglob("*.parquet")):
        files[re.split(r"[-_.]", file.name, maxsplit=1)[0]].append(file)
    if not files:
        raise UsageError(f"--dataset {folder}: no parquet files in it")
    columns, names = {}, None
    for split_name, paths in files.items():
        table = pa.concat_tables(pq.read_table(path) for path in paths)
        columns[split_name] = {c: table.column(c).to_pylist() for c in DATASET_COLUMNS if c in table.column_names}
        # datasets stores the features, ClassLabel names included, in the parquet metadata.
        features = json.loads((table.schema.metadata or {}).get(b"huggingface", b"{}")).get("info", {})
        label = features.get("features", {}).get("label", {})
        if label.get("_type") == "ClassLabel":
            names = list(label["names"])
    return columns, names


def open_image(entry) -> Image.Image:
    """A decoded PIL image from a dataset cell: {'bytes', 'path'} as datasets stores images, or raw bytes."""
    data, path = (entry.get("bytes"), entry.get("path")) if isinstance(entry, dict) else (entry, None)
    image = Image.open(io.BytesIO(data) if data is not None else path)
    image.load()
    return image


def label_indices(labels: list, class_names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    if class_names is None:  # no ClassLabel: classes are the sorted distinct values, as prepare_dataset.py does
        class_names = sorted({str(label) for label in labels})
        return np.array([class_names.index(str(label)) for label in labels]), class_names
    return np.asarray(labels, dtype=np.int64), class_names


def make_folds(columns: dict[str, list], labels: np.ndarray, protocol: str) -> np.ndarray:
    """Folds for a dataset without fold columns: prepare_dataset.py's fold assignment (same code, same defaults),
    stratified by class, over its `group` column or else near-duplicate groups of the image hashes alone.
    prepare_dataset.py groups more (look-alike thumbnails, adjacent figshare slices) and stratifies by class and
    source: prepare a dataset with it for the leak-free folds the README describes."""
    if protocol == "random":  # plain stratified folds ignore groups
        groups = list(range(len(labels)))
    elif "group" in columns:
        groups = columns["group"]
    else:
        groups = find_near_duplicate_groups(columns["image"])
    try:
        fold, fold_random = assign_folds(labels, groups)
    except ValueError as error:
        raise UsageError(f"cannot make folds for this dataset: {error}") from None
    return np.asarray(fold if protocol == "grouped" else fold_random)


def find_near_duplicate_groups(images: list) -> list[int]:
    print(f"Finding near-duplicate groups among {len(images):,} images (the dataset has no group column)...")
    try:
        return near_duplicate_groups([image_hashes(open_image(entry)) for entry in images])
    except ImportError:
        raise UsageError("grouping near-duplicates needs imagehash and scipy; or use --protocol random") from None


def load_table(
    dataset: str,
    protocol: str,
    with_test: bool,
    sources: list[str] | None = None,
    untyped_tumors: str | None = None,
    exclude: str | None = None,
) -> Table:
    """The train split with the protocol's folds (and the test split, for the full model's evaluation); with
    `sources`, only the rows of those sources or source/class cells (the folds stay as the dataset made them); with
    `untyped_tumors` (a list of the dataset's `file` names), those rows labelled ANY_TUMOUR; with `exclude` (a list
    in the same format), without those rows, the other rows keeping the folds of the dataset's fold columns."""
    splits, class_names = read_splits(dataset)
    if "train" not in splits:
        raise UsageError(f"dataset {dataset!r} has no train split (its splits: {', '.join(splits) or 'none'})")
    excluded = read_listing(exclude, "--exclude") if exclude else set()
    untyped = read_listing(untyped_tumors, "--untyped-tumors") if untyped_tumors else set()
    if both := excluded & untyped:  # else a file in both would be "not a row" once excluded
        raise UsageError(f"--exclude and --untyped-tumors both name {len(both)} file(s): {', '.join(sorted(both)[:3])}")
    if exclude:  # first: a list may name rows of sources that --sources then leaves out
        splits = without_listed_files(splits, excluded, exclude)
    if sources:
        splits = {name: only_sources(split, sources, dataset, class_names) for name, split in splits.items()}
    train = splits["train"]
    missing = [column for column in ("image", "label") if column not in train]
    if missing:
        raise UsageError(
            f"dataset {dataset!r} has no {' or '.join(missing)} column (it has {', '.join(train) or 'none'}); "
            "make one with prepare_dataset.py"
        )
    labels, class_names = label_indices(train["label"], class_names)
    if untyped_tumors:
        labels = mark_untyped_tumours(labels, train.get("file"), untyped, untyped_tumors, class_names)
    fold_column = FOLD_COLUMNS[protocol]
    folds = np.asarray(train[fold_column]) if fold_column in train else make_folds(train, labels, protocol)
    images, row_sources = list(train["image"]), train.get("source")
    groups = np.asarray(train["group"]) if "group" in train else np.arange(len(labels))
    test = splits.get("test")
    if with_test and test is not None and "image" in test and "label" in test:
        test_labels, _ = label_indices(test["label"], class_names)
        images += test["image"]
        labels = np.concatenate([labels, test_labels])
        folds = np.concatenate([folds, np.full(len(test_labels), NO_FOLD)])
        row_sources = row_sources + test["source"] if row_sources is not None and "source" in test else None
        groups = np.concatenate([groups, groups.max(initial=-1) + 1 + np.arange(len(test_labels))])
    if folds.max(initial=NO_FOLD) < 1:
        raise UsageError(f"dataset {dataset!r}: column {fold_column} holds fewer than 2 folds")
    return Table(images, labels, folds, row_sources, class_names, groups)


def run_files(
    dataset: str, sources: list[str] | None = None, exclude: str | None = None
) -> tuple[list[str] | None, list[str] | None]:
    """From one read of the dataset: the `file` of every train-split row a run with these settings trained on (a
    fold model: on all but its held-out fold's), as load_table selects them, and the other sources' copies of its
    sources' slices (copies_of_sources; by source, so whether or not --exclude left the originals out). Either is
    None for a dataset without the columns it needs."""
    splits, class_names = read_splits(dataset)
    copies = copies_of_sources(splits.get("train", {}), sources, dataset, class_names)
    if exclude:
        splits = without_listed_files(splits, read_listing(exclude, "--exclude"), exclude)
    train = splits.get("train", {})
    if sources:
        train = only_sources(train, sources, dataset, class_names)
    return train.get("file"), copies


def copies_of_sources(
    train: dict[str, list], sources: list[str] | None, dataset: str, class_names: list[str] | None
) -> list[str] | None:
    """The `file` of every row of the `train` split (of `dataset`) outside `sources` that shares a near-duplicate
    group (the `group` column prepare_dataset.py links copies into, mirrored or re-windowed ones too) with a row of
    them: slices of those sources under another source's name. None for a split without `file` and `group`
    columns; none when `sources` is every source."""
    if "file" not in train or "group" not in train:
        return None
    if not sources:
        return []
    numbered = train | {"_row": list(range(len(train["file"])))}
    selected = set(only_sources(numbered, sources, dataset, class_names)["_row"])
    their_groups = {train["group"][row] for row in selected}
    return [
        file
        for row, (file, group) in enumerate(zip(train["file"], train["group"], strict=True))
        if row not in selected and group in their_groups
    ]


def read_listing(listing: str, option: str) -> set[str]:
    """The files a list names (prepare_dataset.py --exclude's format: one per line, `#` comments)."""
    try:
        return set(read_exclusions(Path(listing)))
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read {option} {listing}: {error}") from None


def check_listed_rows(
    listed: set[str], listing: str, option: str, files: list | None, rows_of: str = "the dataset (or of its --sources)"
) -> None:
    """Refuse a list (read from `listing`) that names a file not among `files`, the rows of `rows_of`."""
    if files is None:
        raise UsageError(f"{option} needs the dataset's `file` column (prepare_dataset.py writes it)")
    missing = sorted(listed - set(files))
    if missing:
        raise UsageError(
            f"{option} {listing} names {len(missing)} file(s) that are not rows of {rows_of}: "
            f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
        )


def without_listed_files(splits: dict[str, dict], listed: set[str], listing: str) -> dict[str, dict]:
    """Every split without the rows whose `file` is `listed` (the list at `listing`; each must be a row of some
    split)."""
    files = [name for split in splits.values() for name in split.get("file", [])]
    check_listed_rows(listed, listing, "--exclude", files if files else None, rows_of="the dataset")
    return {
        name: {
            column: [v for v, f in zip(values, split["file"], strict=True) if f not in listed]
            for column, values in split.items()
        }
        if "file" in split
        else split
        for name, split in splits.items()
    }


def mark_untyped_tumours(
    labels: np.ndarray, files: list | None, listed: set[str], listing: str, class_names: list[str]
) -> np.ndarray:
    """`labels` with ANY_TUMOUR for the rows whose `file` is `listed` (the list at `listing`); every listed file
    must be a row."""
    if NOTUMOR not in class_names:
        raise UsageError(f"--untyped-tumors needs a {NOTUMOR!r} class; the dataset has {class_names}")
    check_listed_rows(listed, listing, "--untyped-tumors", files)
    return np.where(np.isin(files, list(listed)), ANY_TUMOUR, labels)


def balanced_weights(sources: list[str]) -> torch.Tensor:
    """Sampling weights under which every source is drawn equally often: 1 / (its rows) for each row."""
    counts = Counter(sources)
    return torch.tensor([1.0 / counts[source] for source in sources], dtype=torch.float64)


def only_sources(split: dict[str, list], sources: list[str], dataset: str, class_names: list[str] | None) -> dict:
    """The split's rows of `sources`: each a source (a value of the `source` column), or SOURCE/CLASS for that
    source's slices of one class (sartaj/notumor: its healthy slices only)."""
    if "source" not in split:
        raise UsageError(f"--sources: dataset {dataset!r} has no source column (make it with prepare_dataset.py)")
    rows = split["source"]
    labels = split.get("label") or [None] * len(rows)
    names = [class_names[label] if class_names and isinstance(label, int) else str(label) for label in labels]
    wanted = [tuple(spec.partition("/")[::2]) for spec in sources]  # (source, class, or "" for every class)
    cells = set(zip(rows, names, strict=True))
    present = [(source, name) in cells if name else source in rows for source, name in wanted]
    unknown = [spec for spec, found in zip(sources, present, strict=True) if not found]
    if unknown:
        raise UsageError(
            f"--sources: no {', '.join(unknown)} rows in {dataset!r} (its sources: {', '.join(sorted(set(rows)))})"
        )
    keep = [
        i
        for i, (source, name) in enumerate(zip(rows, names, strict=True))
        if (source, "") in wanted or (source, name) in wanted
    ]
    return {column: [values[i] for i in keep] for column, values in split.items()}


# What the decoding processes decode: set in each before its first chunk (inherited through fork, so `transform`
# may be any function, a closure too), or in the calling process when it decodes in threads.
_DECODING: tuple | None = None
_CHUNK = 64  # rows a decoding process returns at once


def _start_decoding(images: list, processor, sizes: list[int], transform) -> None:
    global _DECODING
    _DECODING = images, processor, sizes, transform
    torch.set_num_threads(1)  # the decoders are the parallelism; nested torch threads only contend


def _decode_rows(start: int) -> list[np.ndarray]:
    """Rows start .. start + _CHUNK of the images being decoded, as uint8 arrays (rows, 1, size, size), one per size."""
    images, processor, sizes, transform = _DECODING
    rows = range(start, min(start + _CHUNK, len(images)))
    decoded = [np.empty((len(rows), 1, size, size), dtype=np.uint8) for size in sizes]
    for at, i in enumerate(rows):
        try:
            image = open_image(images[i])
        except Exception as error:  # PIL reports damage as OSError, SyntaxError, ValueError, ...
            raise UsageError(f"row {i} of the dataset is not a readable image: {error}") from None
        if transform is not None:
            image = transform(i, image)
        for array, size in zip(decoded, sizes, strict=True):
            array[at, 0] = processor.preprocess_one(image, size).mul(255).round().to(torch.uint8).numpy()
    return decoded


def decode_images(
    images: list, processor: BrainResNetImageProcessor, sizes: list[int], workers: int, transform=None
) -> list:
    """Every image through processor.preprocess_one once per size: uint8 tensors (N, 1, size, size).

    `workers` processes decode at once (forked, on Linux; threads elsewhere, and a single thread for one
    worker): the processor's many small tensor operations hold Python's lock, so threads scale poorly (16 of them
    decoded about 170 slices/s on the eighth lease's GPU machine). `transform(i, image) -> image`, if given, alters
    the i-th decoded image before the processor (evaluation.py's corruptions)."""
    global _DECODING
    state = images, processor, sizes, transform
    starts = range(0, len(images), _CHUNK)
    if workers > 1 and sys.platform == "linux" and len(starts) > 1:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_decoding, initargs=state) as pool:
            chunks = list(pool.map(_decode_rows, starts))
    else:
        threads = torch.get_num_threads()
        try:
            _start_decoding(*state)
            with ThreadPoolExecutor(workers) as pool:
                chunks = list(pool.map(_decode_rows, starts))
        finally:
            _DECODING = None  # the images, no longer held
            torch.set_num_threads(threads)
    return [
        torch.from_numpy(np.concatenate([chunk[k] for chunk in chunks]))
        if chunks
        else torch.empty(0, 1, size, size, dtype=torch.uint8)
        for k, size in enumerate(sizes)
    ]


@dataclass
class DeviceData:
    """The dataset as tensors on the training device."""

    train_images: torch.Tensor  # uint8 (N, 1, S, S), S = CACHE_MARGIN * image size: augmented crops come from it
    eval_images: torch.Tensor  # uint8 (N, 1, size, size): exactly what the processor gives at the image size
    labels: torch.Tensor
    table: Table
    # train.py --mirror-prob and --paste-prob: augment.tumour_sides of each row of a lateral tumour class (0 for
    # other rows), and the label of healthy slices
    tumour_sides: torch.Tensor | None = None
    healthy_label: int | None = None
    # train.py --heal-prob: augment.grad_cam_lesions of each tumour row too asymmetric to mirror (sagittal, mostly), at
    # the training cache's size; empty for other rows (--mirror-prob's healthy halves are theirs)
    lesion_masks: torch.Tensor | None = None
    # train.py --match-sources and --group-dro: each row's source as 0, 1, ... and how many sources there are
    source_ids: torch.Tensor | None = None
    num_sources: int = 0

    def find_source_ids(self, option: str) -> None:
        """Number the rows' sources (for train.py's `option`, named in the error)."""
        names = sorted(set(self.table.sources or ()))
        if len(names) < 2:
            raise UsageError(f"{option} needs a `source` column naming 2 or more sources; found {names}")
        self.source_ids = torch.from_numpy(np.searchsorted(names, self.table.sources)).to(self.labels.device)
        self.num_sources = len(names)

    def find_tumour_sides(self) -> None:
        """Find the tumour side of every slice of a lateral tumour class (train.py --mirror-prob, --paste-prob)."""
        names = self.table.class_names
        missing = [name for name in (*LATERAL_TUMOUR_CLASSES, NOTUMOR) if name not in names]
        if missing:
            raise UsageError(
                f"--mirror-prob and --paste-prob need the classes {', '.join(missing)}; the dataset has {names}"
            )
        lateral = np.isin(self.table.labels, [names.index(name) for name in LATERAL_TUMOUR_CLASSES])
        sides = tumour_sides(self.train_images)
        self.tumour_sides = torch.where(torch.from_numpy(lateral).to(sides.device), sides, 0).to(torch.int8)
        self.healthy_label = names.index(NOTUMOR)

    def find_lesion_masks(self, model, processor, image_size: int, chunk: int = 256) -> None:
        """Mark the lesion of each tumour slice too asymmetric to mirror where `model` (a trained classifier knowing
        these class names, in eval mode, on this device) sees its class (train.py --heal-prob, --heal-from)."""
        names = self.table.class_names
        model_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        missing = [name for name in names if name not in model_names]
        if NOTUMOR not in names or missing:
            raise UsageError(
                f"--heal-from's model must know the dataset's classes, {NOTUMOR} among them; the dataset has "
                f"{names}, the model {model_names}"
            )
        self.healthy_label = names.index(NOTUMOR)
        to_model = torch.tensor([model_names.index(name) for name in names], device=self.labels.device)
        symmetry = torch.cat([left_right_symmetry(images) for images in self.train_images.split(chunk)])
        tumours = (self.labels != self.healthy_label) & (self.labels != ANY_TUMOUR)  # Grad-CAM needs the class
        marked_rows = torch.nonzero(tumours & (symmetry <= MIN_MIRROR_SYMMETRY)).flatten()
        self.lesion_masks = torch.zeros_like(self.train_images, dtype=torch.bool)
        for rows in marked_rows.split(chunk):  # Grad-CAM, the costly part, of these rows only
            images = self.train_images[rows]
            scaled = F.interpolate(images.float() / 255, size=image_size, mode="bilinear", antialias=True)
            pixel_values = processor.normalize_pixel_values(scaled)
            found = grad_cam_lesions(model, pixel_values, to_model[self.labels[rows]], images.shape[-1])
            # inside the head only (dark lesion cores included): a map's blob on the background heals nothing
            head = F.max_pool2d((images > BACKGROUND_LEVEL).float(), 9, 1, 4) > 0
            self.lesion_masks[rows] = found & head

    def indices(self, fold) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows to train on and rows to evaluate on: the other folds and this one, or all folds and the test split.
        Untyped tumours train but are not evaluated: the 4-class scores have no class for them."""
        folds = self.table.folds
        if fold == FULL:
            train, held_out = folds != NO_FOLD, folds == NO_FOLD
        else:
            train, held_out = (folds != NO_FOLD) & (folds != fold), folds == fold
        held_out &= self.table.labels != ANY_TUMOUR
        device = self.labels.device
        return torch.from_numpy(np.flatnonzero(train)).to(device), torch.from_numpy(np.flatnonzero(held_out)).to(device)
