"""Train the brain-tumor ResNet with k-fold cross-validation: Accelerate, GPU-resident data, Hub-ready folders.

    accelerate launch train.py --dataset /tmp/bt4k-hub --output-dir runs/cv                # 5-fold CV
    accelerate launch train.py --dataset /tmp/bt4k-hub --output-dir runs/release --folds all,full \\
        --push-to-hub you/brain-resnet                          # CV, then the release model on all the data
    python train.py --dataset DATASET --output-dir DIR ...      # one process; the CPU when there is no GPU

DATASET is a Hub dataset id or a folder made by prepare_dataset.py: split `train` (and `test`), columns `image`,
`label` (ClassLabel), `fold` (folds that keep near-duplicates together, --protocol grouped) and `fold_random`
(plain stratified, --protocol random). A dataset without fold columns gets them from prepare_dataset.py's code.

Each fold trains a model from scratch on the other folds and evaluates it on itself; `--folds full` trains on
every fold (the release model) and evaluates on the `test` split when there is one. Every image is decoded and
preprocessed once by BrainResNetImageProcessor (the Space's preprocessing) into uint8 tensors that stay on the
device, where batches are augmented: no DataLoader, no per-step host work.

DIR holds:
    run_args.json          the settings of the run; --resume continues it only with the same settings
    log.jsonl              metrics of every epoch of every fold
    cv_results.json        every finished fold's metrics, their mean and std, throughput, device
    fold-K/, full/         Hub-ready model folders: config.json (auto_map, training_info), model.safetensors
                           (full/: float16 shards of <= 15 MB),
                           remote code, preprocessor_config.json, README.md (model_card.md with this run's results)
    learning_curves.png    losses and held-out accuracy per epoch
    confusion_matrix.png   out-of-fold confusion matrix of the cross-validation
    tensorboard/           the same per-epoch metrics, when tensorboard is installed

SIGINT or SIGTERM (Ctrl-C, a scheduler's time limit) ends the epoch, saves a checkpoint and exits; `--resume`
continues from there, skipping finished folds.
"""

import argparse
import copy
import datetime
import hashlib
import io
import json
import math
import os
import re
import shlex
import shutil
import signal
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from PIL import Image
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from modeling import VARIANTS, BrainResNetConfig, BrainResNetForImageClassification, BrainResNetImageProcessor

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "model_card.md"
RESULTS_START, RESULTS_END = "<!-- train.py:results:start -->", "<!-- train.py:results:end -->"
FOLD_COLUMNS = {"grouped": "fold", "random": "fold_random"}
DATASET_COLUMNS = ("image", "label", "source", "group", "fold", "fold_random")
METRICS = ("accuracy", "macro_f1", "roc_auc_macro")  # the headline metrics, in tables and summaries
FULL = "full"  # the fold name of the model trained on all the data
NO_FOLD = -1  # the fold of test-split rows, as in prepare_dataset.py
# The release folder is committed to git and copied off training machines that take files up to 16 MiB.
RELEASE_SHARD_SIZE = "15MB"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")  # one file, or shards and their index
# Training crops are cut from a cache this much larger than --image-size, so that zooming in keeps detail.
CACHE_MARGIN = 1.15
# The settings that define what a run computes: --resume continues a run only when they are unchanged.
RUN_SETTINGS = (
    "dataset",
    "protocol",
    "model",
    "epochs",
    "batch_size",
    "image_size",
    "lr",
    "weight_decay",
    "warmup",
    "label_smoothing",
    "remap_prob",
    "seed",
    "mixed_precision",
)


class UsageError(Exception):
    """A problem with the command line or the dataset: reported in one line, without a traceback."""


# ---------------------------------------------------------------- command line
def parse_folds(text: str) -> list:
    tokens = []
    for part in text.split(","):
        part = part.strip()
        if part in ("all", FULL):
            tokens.append(part)
        elif part.isdigit():
            tokens.append(int(part))
        else:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give all, full, fold numbers such as 0,1, or a mix such as all,full"
            )
    return tokens


def model_spec(text: str) -> str:
    if text in VARIANTS or (text.endswith(".json") and Path(text).is_file()):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: give one of {', '.join(VARIANTS)} or an existing CONFIG.json")


def number(kind, low, high=math.inf, low_inclusive=True):
    """An argparse type: `kind` within [low, high] (or (low, high] when low is exclusive)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if not (value >= low if low_inclusive else value > low) or value > high:
            bounds = f"{'at least' if low_inclusive else 'above'} {low}" + (
                f" and at most {high}" if high < math.inf else ""
            )
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {bounds}")
        return value

    return parse


def hub_repo_id(text: str) -> str:
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except ValueError as error:  # checked now, not after hours of training
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and the default of each option that has one."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS):
            return action.help
        return f"{action.help} (default: {action.default})"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="train.py", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--dataset", required=True, help="Hub dataset id or local folder from prepare_dataset.py")
    parser.add_argument("--output-dir", required=True, type=Path, help="folder of the run (see above)")
    parser.add_argument(
        "--folds",
        default="all",
        type=parse_folds,
        help="all, fold numbers such as 0,1, full (one model on all the data: the release), or a mix: all,full",
    )
    parser.add_argument(
        "--protocol",
        default="grouped",
        choices=FOLD_COLUMNS,
        help="grouped: folds keep near-duplicate slices together; random: plain stratified folds",
    )
    parser.add_argument(
        "--model",
        default="improved",
        type=model_spec,
        help=f"{', '.join(VARIANTS)} (resnet34 is the baseline, no-* the ablations) or a CONFIG.json",
    )
    parser.add_argument("--epochs", type=number(int, 1), default=100, help="epochs per fold")
    parser.add_argument("--batch-size", type=number(int, 1), default=256, help="global batch, split over processes")
    parser.add_argument("--image-size", type=number(int, 32), default=128, help="model input side in pixels")
    parser.add_argument("--lr", type=number(float, 0, low_inclusive=False), default=2e-3, help="peak AdamW lr")
    parser.add_argument("--weight-decay", type=number(float, 0), default=0.05, help="AdamW decay of the weights")
    parser.add_argument("--warmup", type=number(float, 0, 1), default=0.05, help="fraction of steps warming up")
    parser.add_argument("--label-smoothing", type=number(float, 0, 1), default=0.1, help="of the training loss")
    parser.add_argument(
        "--remap-prob",
        type=number(float, 0, 1),
        default=0.0,
        help="share of training views whose intensities go through a random non-monotonic curve, so that the "
        "MRI sequence (which gives away the source in the 4k data) stops being a cue",
    )
    parser.add_argument("--seed", type=number(int, 0), default=42, help="of weights, batches and augmentation")
    parser.add_argument(
        "--mixed-precision",
        choices=("auto", "bf16", "no"),
        default="auto",
        help="auto: bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16 or AMX), else float32",
    )
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, help="torch.compile the training step (default: on CUDA)"
    )
    parser.add_argument(
        "--save-every",
        type=number(int, 1),
        help="epochs between resumable checkpoints (default: 1 on the CPU, 10 on CUDA, where an epoch takes less "
        "time than a checkpoint); SIGINT and SIGTERM always checkpoint",
    )
    parser.add_argument(
        "--workers", type=number(int, 1), help="image-decoding threads (default: the cores per process)"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --output-dir")
    parser.add_argument(
        "--push-to-hub", metavar="REPO_ID", type=hub_repo_id, help="upload full/ (else the first fold) with its card"
    )
    parser.add_argument(
        "--hub-model-id",
        metavar="REPO_ID",
        type=hub_repo_id,
        help="the Hub repo full/ is to be published at, named by its model card (default: --push-to-hub's)",
    )
    args = parser.parse_args(argv)
    if args.hub_model_id and args.push_to_hub and args.hub_model_id != args.push_to_hub:
        parser.error("--hub-model-id and --push-to-hub name different repos")
    args.hub_model_id = args.hub_model_id or args.push_to_hub
    args.command = shlex.join(["train.py", *(sys.argv[1:] if argv is None else argv)])
    return args


def run_settings(args: argparse.Namespace) -> dict:
    settings = {name: getattr(args, name) for name in RUN_SETTINGS}
    for name in ("dataset", "model"):  # the same file or folder however it is spelled
        if Path(settings[name]).exists():
            settings[name] = str(Path(settings[name]).resolve())
    return settings


def expand_folds(tokens: list, num_folds: int) -> list:
    """The folds to train, in order: cross-validation folds, then the full model."""
    wrong = [t for t in tokens if isinstance(t, int) and t >= num_folds]
    if wrong:
        raise UsageError(f"--folds {wrong[0]}: the dataset has folds 0 to {num_folds - 1}")
    folds = set(range(num_folds)) if "all" in tokens else {t for t in tokens if isinstance(t, int)}
    return sorted(folds) + ([FULL] if FULL in tokens else [])


def fold_name(fold) -> str:
    return FULL if fold == FULL else f"fold-{fold}"


# ---------------------------------------------------------------- run bookkeeping
def read_json(path: Path, default=None):
    return json.loads(path.read_text()) if path.exists() else default


def write_json(path: Path, data) -> None:
    """Write through a temporary file, so that an interruption leaves the old file or the new one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(partial, path)


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as log:
        log.write(json.dumps(record) + "\n")


def check_resume(args: argparse.Namespace) -> dict | None:
    """The saved settings of the run in --output-dir, once sure that this command may continue it."""
    path = args.output_dir / "run_args.json"
    if not path.exists():
        return None
    if not args.resume:
        raise UsageError(
            f"{args.output_dir} already holds a run: add --resume to continue it, or pick a new --output-dir"
        )
    saved = read_json(path)
    current = run_settings(args)
    changed = [
        f"--{name.replace('_', '-')} {saved['settings'].get(name)} (now {value})"
        for name, value in current.items()
        if saved["settings"].get(name) != value
    ]
    if changed:
        raise UsageError(f"--resume continues a run with its own settings; it was run with {', '.join(changed)}")
    return saved


def is_finished(out: Path, results: dict, fold) -> bool:
    """A fold is finished once its model folder is saved and cv_results.json records it."""
    entry = results.get(FULL) if fold == FULL else results.get("folds", {}).get(str(fold))
    return entry is not None and has_weights(out / fold_name(fold))


def has_weights(folder: Path) -> bool:
    return any((folder / name).exists() for name in WEIGHT_FILES)


# ---------------------------------------------------------------- dataset
@dataclass
class Table:
    """The rows to train and evaluate on, images still encoded: train rows, then test rows (fold NO_FOLD)."""

    images: list
    labels: np.ndarray
    folds: np.ndarray
    sources: list[str] | None
    class_names: list[str]


def read_splits(dataset: str) -> tuple[dict[str, dict[str, list]], list[str] | None]:
    """Each split's columns as lists (images left encoded) and the label names, if the dataset declares them."""
    try:
        import datasets
    except ImportError:  # the GPU machine may lack it: a local parquet folder still loads
        if Path(dataset).is_dir():
            return read_parquet_folder(Path(dataset))
        raise UsageError(f"loading the Hub dataset {dataset!r} needs the datasets package") from None
    if dataset.startswith((".", "/", "~")) and not Path(dataset).expanduser().exists():
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
    """Folds for a dataset without fold columns, from prepare_dataset.py's own code and defaults."""
    from prepare_dataset import assign_folds

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
    try:
        from prepare_dataset import image_hashes, near_duplicate_groups
    except ImportError:
        raise UsageError("grouping near-duplicates needs imagehash and scipy; or use --protocol random") from None
    print(f"Finding near-duplicate groups among {len(images):,} images (the dataset has no group column)...")
    return near_duplicate_groups([image_hashes(open_image(entry)) for entry in images])


def load_table(dataset: str, protocol: str, with_test: bool) -> Table:
    """The train split with the protocol's folds (and the test split, for the full model's evaluation)."""
    splits, class_names = read_splits(dataset)
    if "train" not in splits:
        raise UsageError(f"dataset {dataset!r} has no train split (its splits: {', '.join(splits) or 'none'})")
    train = splits["train"]
    missing = [column for column in ("image", "label") if column not in train]
    if missing:
        raise UsageError(
            f"dataset {dataset!r} has no {' or '.join(missing)} column (it has {', '.join(train) or 'none'}); "
            "make one with prepare_dataset.py"
        )
    labels, class_names = label_indices(train["label"], class_names)
    fold_column = FOLD_COLUMNS[protocol]
    folds = np.asarray(train[fold_column]) if fold_column in train else make_folds(train, labels, protocol)
    images, sources = list(train["image"]), train.get("source")
    test = splits.get("test")
    if with_test and test is not None and "image" in test and "label" in test:
        test_labels, _ = label_indices(test["label"], class_names)
        images += test["image"]
        labels = np.concatenate([labels, test_labels])
        folds = np.concatenate([folds, np.full(len(test_labels), NO_FOLD)])
        sources = sources + test["source"] if sources is not None and "source" in test else None
    if folds.max(initial=NO_FOLD) < 1:
        raise UsageError(f"dataset {dataset!r}: column {fold_column} holds fewer than 2 folds")
    return Table(images, labels, folds, sources, class_names)


def decode_images(
    images: list, processor: BrainResNetImageProcessor, sizes: list[int], workers: int, transform=None
) -> list:
    """Every image through processor.preprocess_one once per size: uint8 tensors (N, 1, size, size).

    `transform(i, image) -> image`, if given, alters the i-th decoded image before the processor (evaluation.py's
    corruptions)."""
    caches = [torch.empty(len(images), 1, size, size, dtype=torch.uint8) for size in sizes]

    def decode(i: int) -> None:
        try:
            image = open_image(images[i])
        except Exception as error:  # PIL reports damage as OSError, SyntaxError, ValueError, ...
            raise UsageError(f"row {i} of the dataset is not a readable image: {error}") from None
        if transform is not None:
            image = transform(i, image)
        for cache, size in zip(caches, sizes, strict=True):
            cache[i, 0] = processor.preprocess_one(image, size).mul(255).round()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the decoding threads are the parallelism; nested torch threads only contend
    try:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(decode, range(len(images))))
    finally:
        torch.set_num_threads(threads)
    return caches


@dataclass
class DeviceData:
    """The dataset as tensors on the training device."""

    train_images: torch.Tensor  # uint8 (N, 1, S, S), S = CACHE_MARGIN * image size: augmented crops come from it
    eval_images: torch.Tensor  # uint8 (N, 1, size, size): exactly what the processor gives at the image size
    labels: torch.Tensor
    table: Table

    def indices(self, fold) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows to train on and rows to evaluate on: the other folds and this one, or all folds and the test split."""
        folds = self.table.folds
        if fold == FULL:
            train, held_out = folds != NO_FOLD, folds == NO_FOLD
        else:
            train, held_out = (folds != NO_FOLD) & (folds != fold), folds == fold
        device = self.labels.device
        return torch.from_numpy(np.flatnonzero(train)).to(device), torch.from_numpy(np.flatnonzero(held_out)).to(device)


# ---------------------------------------------------------------- augmentation (batched, on the device)
def augment(images: torch.Tensor, size: int, remap_prob: float = 0.0) -> torch.Tensor:
    """Random views of cached uint8 (B, 1, S, S) slices as float (B, 1, size, size) in [0, 1], all on the device.

    Geometry (zoom, aspect, rotation, shift, left-right flip) is one affine resampling; then, with probability
    `remap_prob`, a random non-monotonic intensity curve (remap_intensity); then gamma, contrast and brightness
    jitter, blur, a lower acquisition resolution and noise, each drawn per image. Intensity, sharpness and
    resolution differ between the sources of the data, so randomising them leaves anatomy as the cue.
    """
    batch, device = images.shape[0], images.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.empty(batch, device=device).uniform_(low, high)

    def chance(p: float) -> torch.Tensor:
        return torch.rand(batch, device=device) < p

    zoom = uniform(0.75, 1.0)  # side of the crop as a fraction of the slice (random resized crop)
    stretch = torch.exp(uniform(-0.1, 0.1))
    scale_x, scale_y = zoom * stretch, zoom / stretch
    angle = torch.deg2rad(uniform(-15, 15))
    flip = torch.where(chance(0.5), -1.0, 1.0)
    shift_x = uniform(-1, 1) * (1 - scale_x).clamp(min=0)  # the crop stays inside the slice
    shift_y = uniform(-1, 1) * (1 - scale_y).clamp(min=0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos * scale_x * flip, -sin * scale_y, shift_x], dim=1),
            torch.stack([sin * scale_x * flip, cos * scale_y, shift_y], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, [batch, 1, size, size], align_corners=False)
    x = F.grid_sample(images.float().div_(255), grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    per_image = (batch, 1, 1, 1)
    x = x.clamp_(0, 1)
    if remap_prob > 0:
        x = torch.where(chance(remap_prob).view(per_image), remap_intensity(x), x)
    x = x.pow_(torch.exp(uniform(-0.35, 0.35)).view(per_image))  # gamma 0.70-1.42
    x = x.mul_(uniform(0.8, 1.2).view(per_image)).add_(uniform(-0.05, 0.05).view(per_image))
    x = gaussian_blur(x, torch.where(chance(0.25), uniform(0.4, 1.2), 0.0))
    x = torch.where(chance(0.2).view(per_image), low_resolution(x, float(np.random.uniform(0.35, 0.8))), x)
    noise = torch.where(chance(0.4), uniform(0.0, 0.04), 0.0).view(per_image)
    return x.add_(torch.randn_like(x) * noise).clamp_(0, 1)


def remap_intensity(x: torch.Tensor, knots: int = 6) -> torch.Tensor:
    """Each image of (B, 1, H, W) in [0, 1] through its own random piecewise-linear curve, black kept black.

    The curves are non-monotonic (SynthSeg-style): tissue contrasts change as between MRI sequences (in the
    4k data every tumour is T1 contrast-enhanced and most healthy slices are other sequences), while the
    shapes of anatomy and lesions stay; the background stays 0, so framing and brain outline do not change.
    """
    batch = x.shape[0]
    levels = torch.rand(batch, knots, device=x.device, dtype=x.dtype)
    levels = levels / levels.amax(dim=1, keepdim=True)  # the brightest tissue keeps full range
    levels = torch.cat([levels.new_zeros(batch, 1), levels], dim=1)  # knots + 1 levels, the first at 0
    position = x.flatten(1) * knots
    lower = position.floor().clamp_(max=knots - 1)
    weight = position - lower
    lower = lower.long()
    start, end = levels.gather(1, lower), levels.gather(1, lower + 1)
    return torch.lerp(start, end, weight).view_as(x)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Separable Gaussian blur of each image of (B, 1, H, W) with its own sigma (0: unchanged), in one grouped conv."""
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    weights = torch.exp(-(offsets**2) / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    weights = (weights / weights.sum(dim=1, keepdim=True))[:, None, :]  # (B, 1, taps)
    batch, _, height, width = x.shape
    x = F.conv2d(x.view(1, batch, height, width), weights[..., None], padding=(radius, 0), groups=batch)
    x = F.conv2d(x, weights[:, :, None, :], padding=(0, radius), groups=batch)
    return x.view(batch, 1, height, width)


def low_resolution(x: torch.Tensor, factor: float) -> torch.Tensor:
    """The batch as if acquired at `factor` times the resolution: area downsampling, bilinear upsampling."""
    small = F.interpolate(x, scale_factor=factor, mode="area")
    return F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)


# ---------------------------------------------------------------- model, optimisation, evaluation
def model_config(spec: str, class_names: list[str]) -> BrainResNetConfig:
    try:
        config = BrainResNetConfig(**VARIANTS[spec]) if spec in VARIANTS else BrainResNetConfig.from_json_file(spec)
    except (OSError, ValueError, TypeError) as error:
        raise UsageError(f"--model {spec}: {error}") from None
    config.id2label = dict(enumerate(class_names))
    config.label2id = {name: i for i, name in enumerate(class_names)}
    return config


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, fused: bool) -> torch.optim.AdamW:
    """AdamW without decay on BatchNorm parameters and biases (decaying them only fights the normalisation)."""
    matrices = [p for p in model.parameters() if p.ndim > 1]
    vectors = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": matrices, "weight_decay": weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, fused=fused)


def model_input(images: torch.Tensor, processor: BrainResNetImageProcessor) -> torch.Tensor:
    """Float (B, 1, H, W) in [0, 1] -> normalised model input, channels_last like the model."""
    return processor.normalize_pixel_values(images).contiguous(memory_format=torch.channels_last)


def native_bf16() -> bool:
    """Whether bf16 autocast speeds training up here: on CUDA, and on CPUs with bf16 instructions (on others
    oneDNN emulates bf16, slower than float32)."""
    if torch.cuda.is_available():
        return True
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so looked up defensively
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def logits_function(model: torch.nn.Module, device: torch.device, bf16: bool):
    """pixel_values -> float32 logits, under bf16 autocast when asked.

    Autocast wraps the (compiled) model from outside rather than through Accelerate's mixed precision, which
    patches each model's forward with its own autocast object: torch.compile would then recompile for every fold.
    """

    def logits(pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(pixel_values=pixel_values).logits.float()

    return logits


def train_step(forward, optimizer, scheduler, accelerator, images, labels, args, processor):
    """One optimisation step on cached uint8 slices; returns loss and correct count as device tensors (no sync)."""
    logits = forward(model_input(augment(images, args.image_size, args.remap_prob), processor))
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=args.label_smoothing)
    accelerator.backward(loss)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), (logits.argmax(dim=1) == labels).sum()


def train_epoch(forward, model, optimizer, scheduler, accelerator, data, train_rows, order, args, processor):
    """One pass over `train_rows` in `order` (the same permutation on every process, each taking its share)."""
    model.train()
    processes, rank = accelerator.num_processes, accelerator.process_index
    per_process = args.batch_size // processes
    steps = len(train_rows) // args.batch_size  # whole batches only: one shape for torch.compile and BatchNorm
    rows = train_rows[order.to(train_rows.device)]
    loss_sum = torch.zeros((), device=accelerator.device)
    correct = torch.zeros((), device=accelerator.device, dtype=torch.long)
    started = time.perf_counter()
    for step in range(steps):
        batch = rows[step * args.batch_size + rank * per_process :][:per_process]
        loss, hits = train_step(
            forward, optimizer, scheduler, accelerator, data.train_images[batch], data.labels[batch], args, processor
        )
        loss_sum += loss
        correct += hits
    totals = accelerator.reduce(torch.stack([loss_sum, correct.float()]), "sum").tolist()  # waits for the GPU
    seconds = time.perf_counter() - started
    images = steps * args.batch_size
    return {
        "lr": scheduler.get_last_lr()[0],
        "train_loss": totals[0] / (steps * processes),
        "train_accuracy": totals[1] / images,
        "train_images": images,
        "train_seconds": seconds,
        "train_images_per_s": images / seconds,
    }


@torch.no_grad()
def predict(forward, model, accelerator, images: torch.Tensor, rows: torch.Tensor, batch_size: int, processor):
    """Logits of images[rows] in order, on the CPU. Each process scores a contiguous share, padded to whole
    batches (one shape for cuDNN, the same number of forwards on every process); gathering in process order and
    trimming restores `rows`."""
    model.eval()
    count, processes = len(rows), accelerator.num_processes
    per_process = math.ceil(count / (processes * batch_size)) * batch_size
    padded = torch.cat([rows, rows[:1].expand(per_process * processes - count)])
    mine = padded[accelerator.process_index * per_process :][:per_process]
    logits = [forward(model_input(images[batch].float().div_(255), processor)) for batch in mine.split(batch_size)]
    return accelerator.gather(torch.cat(logits))[:count].cpu()


def classification_metrics(labels: np.ndarray, probs: np.ndarray, class_names: list[str], sources=None) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1, one-vs-rest ROC-AUC, confusion matrix (scikit-learn)."""
    classes = list(range(len(class_names)))
    preds = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(labels, preds, labels=classes, zero_division=0)
    auc = {
        name: float(roc_auc_score(labels == c, probs[:, c])) if 0 < np.sum(labels == c) < len(labels) else None
        for c, name in enumerate(class_names)  # undefined for a class absent from (or alone in) the fold
    }
    defined = [value for value in auc.values() if value is not None]
    metrics = {
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, labels=classes, average="macro", zero_division=0)),
        "roc_auc_macro": float(np.mean(defined)) if defined else None,
        "precision": dict(zip(class_names, precision.tolist(), strict=True)),
        "recall": dict(zip(class_names, recall.tolist(), strict=True)),
        "f1": dict(zip(class_names, f1.tolist(), strict=True)),
        "support": dict(zip(class_names, support.tolist(), strict=True)),
        "roc_auc": auc,
        "confusion_matrix": confusion_matrix(labels, preds, labels=classes).tolist(),
    }
    if sources is not None:  # every tumour comes from one source and every healthy slice from another
        sources = np.asarray(sources)
        metrics["accuracy_by_source"] = {
            str(s): float(np.mean(preds[sources == s] == labels[sources == s])) for s in sorted(set(sources))
        }
    return metrics


def eval_record(logits: torch.Tensor, labels: np.ndarray) -> dict:
    preds = logits.argmax(dim=1).numpy()
    return {
        "eval_loss": F.cross_entropy(logits, torch.from_numpy(labels)).item(),
        "eval_accuracy": float(np.mean(preds == labels)),
        "eval_macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0)),
    }


def summarize(folds: dict) -> dict:
    """Mean and std (sample, ddof=1; 0 for one fold) over folds, and the pooled out-of-fold confusion matrix."""
    entries = [folds[key] for key in sorted(folds, key=int)]
    summary = {"folds": [entry["fold"] for entry in entries]}
    for name in (*METRICS, "train_images_per_s"):
        values = [entry[name] for entry in entries if entry.get(name) is not None]
        if values:
            summary[name] = {
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            }
    for name in ("recall", "roc_auc"):
        per_class = defaultdict(list)
        for entry in entries:
            for class_name, value in entry.get(name, {}).items():
                if value is not None:
                    per_class[class_name].append(value)
        summary[name] = {c: float(np.mean(values)) for c, values in per_class.items()}
    matrices = [np.array(entry["confusion_matrix"]) for entry in entries if "confusion_matrix" in entry]
    if matrices:
        summary["confusion_matrix"] = np.sum(matrices, axis=0).tolist()
    summary["wall_seconds"] = float(sum(entry["wall_seconds"] for entry in entries))
    return summary


# ---------------------------------------------------------------- checkpoints, signals, seeds
def derive_seed(*keys) -> int:
    """A seed for one random stream of the run (fold, epoch, purpose, process): resuming replays it exactly."""
    return int(hashlib.sha256(repr(keys).encode()).hexdigest()[:8], 16)


def latest_checkpoint(fold_dir: Path) -> tuple[int, Path] | None:
    """(epoch, folder) of the newest complete checkpoint: its progress.json is written last."""
    complete = [
        (read_json(path / "progress.json")["epoch"], path)
        for path in (fold_dir / "checkpoints").glob("epoch-*")
        if (path / "progress.json").exists()
    ]
    return max(complete) if complete else None


def save_checkpoint(accelerator: Accelerator, fold_dir: Path, fold, epoch: int) -> None:
    path = fold_dir / "checkpoints" / f"epoch-{epoch:04d}"
    accelerator.save_state(str(path))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(path / "progress.json", {"fold": fold, "epoch": epoch})
        for older in (fold_dir / "checkpoints").glob("epoch-*"):
            if older != path:
                shutil.rmtree(older)


class GracefulStop:
    """On SIGINT or SIGTERM, finish the epoch, checkpoint and exit; a second signal stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.signal = None
        self.previous = {sig: signal.signal(sig, self.handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum, frame):
        self.signal = signum
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        print(f"\n{signal.Signals(signum).name}: stopping after this epoch (again to stop now)", file=sys.stderr)

    def requested(self, accelerator: Accelerator) -> bool:
        """Whether any process was signalled; every process must ask, at the same point, to stop together."""
        flag = torch.tensor(float(self.signal is not None), device=accelerator.device)
        return accelerator.reduce(flag, "max").item() > 0


# ---------------------------------------------------------------- one fold
def tensorboard_writer(out: Path, fold):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard" / fold_name(fold)))


def train_fold(fold, args, accelerator, data: DeviceData, config, processor, stop, results: dict) -> bool:
    """Train one fold from scratch (or from its checkpoint), save its model folder and record it in results.

    Returns False when stopped by a signal, with a checkpoint to resume from.
    """
    out, main = args.output_dir, accelerator.is_main_process
    fold_dir, table = out / fold_name(fold), data.table
    train_rows, eval_rows = data.indices(fold)
    steps_per_epoch = len(train_rows) // args.batch_size
    if steps_per_epoch == 0:
        raise UsageError(f"{fold_name(fold)} has {len(train_rows)} training images, fewer than --batch-size")

    torch.manual_seed(derive_seed(args.seed, fold, "init"))
    model = BrainResNetForImageClassification(config)
    # channels_last: tensor-core convolutions on CUDA and oneDNN's bf16 ones on the CPU both run faster in it.
    model.to(accelerator.device, memory_format=torch.channels_last)
    optimizer = build_optimizer(model, args.lr, args.weight_decay, fused=accelerator.device.type == "cuda")
    total_steps = steps_per_epoch * args.epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(args.warmup * total_steps), total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    start_epoch = 0
    if (checkpoint := latest_checkpoint(fold_dir)) is not None:
        start_epoch = checkpoint[0]
        accelerator.load_state(str(checkpoint[1]))
        accelerator.print(f"{fold_name(fold)}: resuming after epoch {start_epoch}")
    # Only training is compiled: evaluation is a tenth of the work, not worth a second (no-grad) compilation.
    # Folds after the first reuse the first one's graphs: same code, new parameters as graph inputs.
    train_forward = logits_function(torch.compile(model) if args.compile else model, accelerator.device, args.bf16)
    eval_forward = logits_function(model, accelerator.device, args.bf16)

    eval_labels = table.labels[eval_rows.cpu().numpy()]
    eval_batch = args.batch_size // accelerator.num_processes
    writer = tensorboard_writer(out, fold) if main else None
    bar = tqdm(
        total=args.epochs, initial=start_epoch, desc=fold_name(fold), unit="epoch", disable=not main, dynamic_ncols=True
    )
    fold_started, logits = time.perf_counter(), None
    for epoch in range(start_epoch, args.epochs):
        epoch_started = time.perf_counter()
        # Seeds per epoch rather than one stream: a resumed run draws exactly what the uninterrupted one drew.
        order = torch.randperm(
            len(train_rows), generator=torch.Generator().manual_seed(derive_seed(args.seed, fold, epoch))
        )
        torch.manual_seed(derive_seed(args.seed, fold, epoch, "augment", accelerator.process_index))
        np.random.seed(derive_seed(args.seed, fold, epoch, "augment", accelerator.process_index))
        record = {"fold": fold, "epoch": epoch + 1, "epochs": args.epochs}
        record |= train_epoch(
            train_forward, model, optimizer, scheduler, accelerator, data, train_rows, order, args, processor
        )
        if len(eval_rows):
            logits = predict(eval_forward, model, accelerator, data.eval_images, eval_rows, eval_batch, processor)
            record |= eval_record(logits, eval_labels)
        last = epoch + 1 == args.epochs
        stopping = not last and stop.requested(accelerator)
        if not last and ((epoch + 1) % args.save_every == 0 or stopping):
            save_checkpoint(accelerator, fold_dir, fold, epoch + 1)
        record["epoch_seconds"] = time.perf_counter() - epoch_started
        if main:
            append_jsonl(out / "log.jsonl", record)
            if writer is not None:
                for name, value in record.items():
                    if name not in ("fold", "epoch", "epochs"):
                        writer.add_scalar(name, value, epoch + 1)
        bar.update()
        bar.set_postfix(
            loss=f"{record['train_loss']:.3f}",
            acc=f"{record.get('eval_accuracy', float('nan')):.3f}",
            img_s=f"{record['train_images_per_s']:,.0f}",
        )
        if stopping:
            bar.close()
            return False
    bar.close()
    if writer is not None:
        writer.close()

    if main:
        entry = {
            "fold": fold,
            "num_train": len(train_rows),
            "num_eval": len(eval_rows),
            "epochs": args.epochs,
            **fold_timing(out / "log.jsonl", fold, time.perf_counter() - fold_started, start_epoch),
            "device": device_name(accelerator),
            "num_processes": accelerator.num_processes,
            "mixed_precision": "bf16" if args.bf16 else "no",
            "compile": args.compile,
            "final_train_loss": record["train_loss"],
        }
        if logits is not None:
            sources = [table.sources[i] for i in eval_rows.tolist()] if table.sources is not None else None
            probs = torch.softmax(logits, dim=1).numpy()
            entry |= {"eval_split": "test" if fold == FULL else f"fold {fold}", "eval_loss": record["eval_loss"]}
            entry |= classification_metrics(eval_labels, probs, table.class_names, sources)
        save_fold(fold, args, accelerator.unwrap_model(model), processor, entry, results)
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    return True


def save_fold(fold, args, model, processor, entry: dict, results: dict) -> None:
    """Write the fold's model folder and its cv_results.json entry; only then drop its checkpoints."""
    out = args.output_dir
    if fold == FULL:
        results[FULL] = entry
    else:
        results.setdefault("folds", {})[str(fold)] = entry
        results["summary"] = summarize(results["folds"])
    model.config.training_info = training_info(args, fold, entry, results)
    save_model_folder(model, processor, out / fold_name(fold), half_storage=fold == FULL)
    write_json(out / "cv_results.json", results)
    shutil.rmtree(out / fold_name(fold) / "checkpoints", ignore_errors=True)
    write_reports(out, results, args.hub_model_id)
    print(fold_summary(fold, entry))


def save_model_folder(model, processor, folder: Path, half_storage: bool) -> None:
    """A Hub-ready folder. The release (full) model stores float16 weights, half the size (the Space and the Hub
    repo hold it), in shards of at most RELEASE_SHARD_SIZE, while config.json keeps dtype float32, so that
    from_pretrained's default dtype="auto" loads a float32 model that runs on any CPU."""
    if half_storage:
        copy.deepcopy(model).to(device="cpu", dtype=torch.float16).save_pretrained(
            folder, max_shard_size=RELEASE_SHARD_SIZE
        )
        config_path = folder / "config.json"
        write_json(config_path, read_json(config_path) | {"dtype": "float32"})
    else:
        model.save_pretrained(folder)
    processor.save_pretrained(folder)


def fold_timing(log_path: Path, fold, session_seconds: float, start_epoch: int) -> dict:
    """Throughput (median over epochs: compilation and warm-up fall out) and time, counting resumed sessions."""
    records = epoch_records(log_path).get(fold, {})
    earlier = sum(r["epoch_seconds"] for epoch, r in records.items() if epoch <= start_epoch)
    return {
        "train_images_per_s": float(np.median([r["train_images_per_s"] for r in records.values()])),
        "train_seconds": float(sum(r["train_seconds"] for r in records.values())),
        "wall_seconds": earlier + session_seconds,
    }


def epoch_records(log_path: Path) -> dict:
    """log.jsonl as {fold: {epoch: record}}; an epoch redone after an interruption keeps its last record."""
    records = defaultdict(dict)
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            record = json.loads(line)
            records[record["fold"]][record["epoch"]] = record
    return records


def device_name(accelerator: Accelerator) -> str:
    return torch.cuda.get_device_name(accelerator.device) if accelerator.device.type == "cuda" else "cpu"


def training_info(args, fold, entry: dict, results: dict) -> dict:
    """config.training_info: flat, so the Space can list it; its presence marks the weights as trained."""
    info = {
        "trainer": "train.py",
        "dataset": args.dataset,
        "protocol": args.protocol,
        "folds": results["num_folds"],
        "trained_on": "all folds" if fold == FULL else f"all folds but fold {fold}",
        "model": args.model,
        "epochs": args.epochs,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "device": entry["device"],
        "date": datetime.date.today().isoformat(),
    }
    if "eval_split" in entry:
        info["evaluated_on"] = entry["eval_split"]
        info |= {name: entry[name] for name in METRICS if entry.get(name) is not None}
    if fold == FULL and "summary" in results:
        summary = results["summary"]
        info["cv_folds"] = len(summary["folds"])
        info |= {
            f"cv_{name}_{stat}": summary[name][stat] for name in METRICS if name in summary for stat in ("mean", "std")
        }
    return info


def fold_summary(fold, entry: dict) -> str:
    scores = ", ".join(f"{name} {entry[name]:.4f}" for name in METRICS if entry.get(name) is not None)
    return (
        f"{fold_name(fold)}: {scores or 'no held-out data'}; {entry['train_images_per_s']:,.0f} train images/s, "
        f"{entry['wall_seconds']:.0f} s"
    )


# ---------------------------------------------------------------- reports: plots, model cards, the Hub
def write_reports(out: Path, results: dict, release_id: str | None = None) -> None:
    """Plots of the run, and each model folder's card, naming full/ by `release_id` (its Hub repo) when given."""
    plot_learning_curves(epoch_records(out / "log.jsonl"), out / "learning_curves.png")
    matrix, title = None, None
    if "confusion_matrix" in results.get("summary", {}):
        matrix, title = (
            results["summary"]["confusion_matrix"],
            "Out-of-fold predictions, folds " + ", ".join(map(str, results["summary"]["folds"])),
        )
    elif "confusion_matrix" in results.get(FULL, {}):
        matrix, title = results[FULL]["confusion_matrix"], "Full model on the test split"
    if matrix is not None:
        plot_confusion_matrix(np.array(matrix), results["class_names"], title, out / "confusion_matrix.png")
    template = MODEL_CARD_TEMPLATE.read_text()
    for fold in [*results.get("folds", {}), *([FULL] if FULL in results else [])]:
        folder = out / fold_name(fold if fold == FULL else int(fold))
        model_id = release_id if fold == FULL and release_id else str(folder)
        (folder / "README.md").write_text(render_model_card(template, results, fold, model_id))


def plot_learning_curves(records: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (fold, epochs) in enumerate(records.items()):
        color, xs = f"C{i}", sorted(epochs)
        loss_axis.plot(xs, [epochs[e]["train_loss"] for e in xs], color=color, label=f"{fold_name(fold)} train")
        if all("eval_loss" in epochs[e] for e in xs):
            loss_axis.plot(
                xs, [epochs[e]["eval_loss"] for e in xs], "--", color=color, label=f"{fold_name(fold)} held out"
            )
            accuracy_axis.plot(xs, [epochs[e]["eval_accuracy"] for e in xs], color=color, label=fold_name(fold))
        accuracy_axis.plot(
            xs, [epochs[e]["train_accuracy"] for e in xs], ":", color=color, alpha=0.6, label=f"{fold_name(fold)} train"
        )
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy", title="Loss (train: label-smoothed, augmented)")
    accuracy_axis.set(xlabel="epoch", ylabel="accuracy", title="Accuracy (held out; dotted: train)")
    for axis in (loss_axis, accuracy_axis):
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_confusion_matrix(matrix: np.ndarray, class_names: list[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure, axis = plt.subplots(figsize=(5.5, 4.8))
    axis.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (row, col), count in np.ndenumerate(matrix):
        color = "white" if rates[row, col] > 0.5 else "black"
        axis.text(col, row, f"{count}\n{rates[row, col]:.1%}", ha="center", va="center", fontsize=8, color=color)
    ticks = range(len(class_names))
    axis.set(xticks=ticks, yticks=ticks, xticklabels=class_names, yticklabels=class_names)
    axis.set(xlabel="predicted", ylabel="true", title=title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def format_stat(stat: dict | None, spec: str = ".4f") -> str:
    return f"{stat['mean']:{spec}} ± {stat['std']:{spec}}" if stat else "–"


def results_markdown(results: dict, fold, model_id: str) -> str:
    """The model card's results section: the cross-validation table and what these weights are."""
    settings, class_names = results["args"]["settings"], results["class_names"]
    folds, summary = results.get("folds", {}), results.get("summary", {})
    scheme = f"{settings['protocol']} {results['num_folds']}-fold cross-validation of" if folds else "trained on"
    lines = [
        f"Trained with `{results['args']['command']}` on {results['device']}: {settings['model']} model, "
        f"{scheme} `{settings['dataset']}`, {settings['epochs']} epoch{'s' if settings['epochs'] != 1 else ''}, "
        f"{settings['image_size']} px, batch {settings['batch_size']}, peak lr {settings['lr']}, "
        f"seed {settings['seed']}.",
        "",
    ]
    if folds:
        header = [
            "Fold",
            "Train / held out",
            "Accuracy",
            "Macro-F1",
            "ROC-AUC (OvR)",
            *(f"Recall {c}" for c in class_names),
        ]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for key in sorted(folds, key=int):
            entry = folds[key]
            cells = [key, f"{entry['num_train']:,} / {entry['num_eval']:,}"]
            cells += [f"{entry[m]:.4f}" if entry.get(m) is not None else "–" for m in METRICS]
            cells += [f"{entry['recall'][c]:.4f}" for c in class_names]
            lines.append("| " + " | ".join(cells) + " |")
        cells = ["**mean ± std**", ""]
        cells += [format_stat(summary.get(m)) for m in METRICS]
        cells += [f"{summary['recall'][c]:.4f}" if c in summary.get("recall", {}) else "–" for c in class_names]
        lines += ["| " + " | ".join(cells) + " |", ""]
        by_source = defaultdict(list)
        for entry in folds.values():
            for source, accuracy in entry.get("accuracy_by_source", {}).items():
                by_source[source].append(accuracy)
        if by_source:
            listing = ", ".join(f"{s} {np.mean(v):.4f}" for s, v in sorted(by_source.items()))
            lines += [f"Held-out accuracy by image source (mean over folds): {listing}.", ""]
        lines += [
            f"Training throughput: {format_stat(summary.get('train_images_per_s'), ',.0f')} images/s "
            f"(median epoch of each fold); {summary['wall_seconds']:.0f} s for {len(folds)} fold(s).",
            "",
        ]
    else:
        lines += ["This run has no cross-validation folds.", ""]
    if fold == FULL:
        entry = results[FULL]
        lines.append(f"**These weights** are the release model, trained on all {entry['num_train']:,} training images.")
        if "accuracy" in entry:
            lines.append(
                f"On the dataset's test split ({entry['num_eval']:,} images): accuracy {entry['accuracy']:.4f}, "
                f"macro-F1 {entry['macro_f1']:.4f}, ROC-AUC {entry['roc_auc_macro']:.4f}."
            )
    else:
        entry = folds[str(fold)]
        lines.append(
            f"**These weights** are fold {fold}'s model: trained on the other folds ({entry['num_train']:,} images), "
            f"so they score its row of the table, not the release model's."
        )
    lines += [
        "",
        "```python",
        "from transformers import AutoModelForImageClassification",
        "",
        f'model = AutoModelForImageClassification.from_pretrained("{model_id}", trust_remote_code=True)',
        "```",
    ]
    return "\n".join(lines)


def model_index_results(results: dict) -> list:
    from huggingface_hub import EvalResult

    settings = results["args"]["settings"]
    dataset = settings["dataset"]
    dataset_type = Path(dataset).name if Path(dataset).exists() else dataset
    found = []
    summary = results.get("summary", {})
    for metric, name in (("accuracy", "accuracy"), ("macro_f1", "f1"), ("roc_auc_macro", "roc_auc")):
        if metric in summary:
            found.append(
                EvalResult(
                    task_type="image-classification",
                    dataset_type=dataset_type,
                    dataset_name=f"{dataset_type} ({settings['protocol']} {results['num_folds']}-fold CV)",
                    dataset_split="train",
                    metric_type=name,
                    metric_value=round(summary[metric]["mean"], 4),
                    metric_name=f"{metric} (mean over folds {summary['folds']})",
                )
            )
        if results.get(FULL, {}).get(metric) is not None:
            found.append(
                EvalResult(
                    task_type="image-classification",
                    dataset_type=dataset_type,
                    dataset_name=dataset_type,
                    dataset_split="test",
                    metric_type=name,
                    metric_value=round(results[FULL][metric], 4),
                    metric_name=f"{metric} (release model, test split)",
                )
            )
    return found


def render_model_card(template: str, results: dict, fold, model_id: str) -> str:
    """model_card.md with this run's results between its markers and in the model-index metadata."""
    from huggingface_hub import ModelCard

    card = ModelCard(template)
    start, end = card.text.find(RESULTS_START), card.text.find(RESULTS_END)
    if start < 0 or end < start:
        raise ValueError(f"the model card template lacks the {RESULTS_START} ... {RESULTS_END} markers")
    start += len(RESULTS_START)
    card.text = f"{card.text[:start]}\n{results_markdown(results, fold, model_id)}\n{card.text[end:]}"
    eval_results = model_index_results(results)
    if eval_results:
        card.data.model_name = model_id.rstrip("/").split("/")[-1]
        card.data.eval_results = eval_results
    dataset = results["args"]["settings"]["dataset"]
    if not Path(dataset).exists():  # a Hub dataset id
        card.data.datasets = [dataset]
    return str(card)


def push_to_hub(folder: Path, repo_id: str) -> None:
    """The script's only network call: create the model repo if needed and upload the folder."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message="Upload model trained with train.py")


def publish(out: Path, results: dict, repo_id: str) -> None:
    """Upload the release model (else the first fold's) with its card naming the repo."""
    folds = sorted(int(key) for key in results.get("folds", {}))
    fold = FULL if FULL in results else folds[0] if folds else None
    if fold is None:
        raise UsageError(f"{out} has no finished model to push")
    folder = out / fold_name(fold)
    (folder / "README.md").write_text(
        render_model_card(MODEL_CARD_TEMPLATE.read_text(), results, fold if fold == FULL else str(fold), repo_id)
    )
    print(f"Uploading {folder} to https://huggingface.co/{repo_id} ...")
    try:
        push_to_hub(folder, repo_id)
    except Exception as error:  # network or authentication: the folder is complete, so say how to retry
        raise UsageError(
            f"upload to {repo_id} failed ({type(error).__name__}: {error}); {folder} is complete: rerun with "
            "--resume --push-to-hub, or `hf upload`"
        ) from None
    print(f"Uploaded https://huggingface.co/{repo_id}")


# ---------------------------------------------------------------- main
def run(args: argparse.Namespace) -> int:
    out = args.output_dir
    saved = check_resume(args)
    results = read_json(out / "cv_results.json", default={})
    if saved is not None:
        selected = expand_folds(args.folds, saved["num_folds"])
        if all(is_finished(out, results, fold) for fold in selected):
            print(f"{out}: {', '.join(fold_name(f) for f in selected)} already finished; see cv_results.json")
            if args.push_to_hub:
                publish(out, results, args.push_to_hub)
            return 0

    # Precision is this script's --mixed-precision (see logits_function), not `accelerate launch`'s.
    args.bf16 = args.mixed_precision == "bf16" or (args.mixed_precision == "auto" and native_bf16())
    accelerator = Accelerator(mixed_precision="no", step_scheduler_with_optimizer=False)
    try:
        return train_folds(args, accelerator, saved, results)
    finally:
        accelerator.end_training()


def train_folds(args: argparse.Namespace, accelerator: Accelerator, saved: dict | None, results: dict) -> int:
    """Load and cache the dataset, train every pending fold, publish; the exit status."""
    out = args.output_dir
    if args.batch_size % accelerator.num_processes:
        raise UsageError(f"--batch-size {args.batch_size} does not split over {accelerator.num_processes} processes")
    on_cuda = accelerator.device.type == "cuda"
    args.compile = on_cuda if args.compile is None else args.compile
    args.save_every = args.save_every or (10 if on_cuda else 1)
    if on_cuda:
        torch.backends.cudnn.benchmark = True  # every batch has one shape
        torch.backends.cuda.matmul.allow_tf32 = True

    with GracefulStop() as stop:
        started = time.perf_counter()
        table = load_table(args.dataset, args.protocol, with_test=FULL in args.folds)
        num_folds = int(table.folds.max()) + 1
        selected = expand_folds(args.folds, num_folds)
        config = model_config(args.model, table.class_names)
        if accelerator.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            if saved is None:
                write_json(
                    out / "run_args.json",
                    {"settings": run_settings(args), "num_folds": num_folds, "command": args.command},
                )
            results |= {
                "args": read_json(out / "run_args.json"),
                "num_folds": num_folds,
                "class_names": table.class_names,
                "device": device_name(accelerator),
                "num_processes": accelerator.num_processes,
                "params": sum(p.numel() for p in BrainResNetForImageClassification(config).parameters()),
            }
        accelerator.wait_for_everyone()
        pending = [fold for fold in selected if not is_finished(out, results, fold)]

        processor = BrainResNetImageProcessor(size=args.image_size, num_channels=config.num_channels)
        workers = args.workers or max(1, len(os.sched_getaffinity(0)) // accelerator.num_processes)
        cache_size = round(args.image_size * CACHE_MARGIN)
        train_images, eval_images = decode_images(table.images, processor, [cache_size, args.image_size], workers)
        data = DeviceData(
            train_images.to(accelerator.device),
            eval_images.to(accelerator.device),
            torch.from_numpy(table.labels).to(accelerator.device),
            table,
        )
        accelerator.print(
            f"{len(table.labels):,} images decoded in {time.perf_counter() - started:.1f} s; training "
            f"{', '.join(fold_name(f) for f in pending)} on {device_name(accelerator)} x {accelerator.num_processes} "
            f"({'bf16 autocast' if args.bf16 else 'float32'}, compile {'on' if args.compile else 'off'})"
        )
        for fold in pending:
            finished = train_fold(fold, args, accelerator, data, config, processor, stop, results)
            if not finished or (fold != pending[-1] and stop.requested(accelerator)):
                name = signal.Signals(stop.signal).name if stop.signal else "a signal"
                resume = args.command if args.resume else f"{args.command} --resume"
                accelerator.print(f"Stopped by {name}; continue with: {resume}")
                return 128 + (stop.signal or signal.SIGTERM)
    if args.push_to_hub and accelerator.is_main_process:
        publish(out, results, args.push_to_hub)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except UsageError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
