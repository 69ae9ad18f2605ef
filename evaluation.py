"""Robustness, source-shortcut and external-data checks of trained models.

    python evaluation.py robustness runs/improved runs/resnet34 --output results/robustness.json
    python evaluation.py external DATA_FOLDER --model release --model runs/cv/fold-0 --output results/external.json
    python evaluation.py summary runs/* --robustness results/robustness.json --output results/summary.json

`robustness` re-scores every fold model of train.py cross-validation runs on its own held-out fold (the runs must
share one dataset; each keeps its own protocol, model and image size). Each held-out slice is altered *before* the
image processor, as a different scanner or pipeline would alter it:

    gaussian_noise  sigma as a fraction of full scale     blur       Gaussian radius in pixels
    contrast        PIL contrast factor (1 = unchanged)   gamma      exponent on [0, 1] intensities
    jpeg            re-compression quality                downscale  factor on the side in pixels
    rotation        degrees, either direction

and two source-shortcut stress tests: `tumor_as_br35h` re-renders the held-out tumor slices the way the notumor
(Br35H) slices look (their sizes and aspect ratios, drawn from the dataset's notumor slices; tighter or looser
framing; RGB; other gamma and contrast; JPEG quality 70-80), and `notumor_as_figshare` renders the held-out notumor
slices the way the figshare tumor slices look (grayscale, padded square, 256 px, JPEG quality 90-95). The shortcut
flip rate is the share of tumor slices that the model does not call "notumor" as they are, but does once
re-rendered. Every alteration is seeded per image, so every model sees the same altered slices. With `--views N`
(16 by default; 0 for none) the clean slices are also scored with test-time views: each fold model's softmax
averaged over the slice as it is and N views drawn as training draws them (`brain_resnet.augment.augment`:
geometry and intensity jitter, from the training cache's margin), seeded; the clean accuracy with views is
reported beside the single-view one, never in its place.

`external` scores models on slices from another source: DATA_FOLDER holds one folder per class, named as the
model's labels, or `tumor` for tumor slices of unknown type (Br35H's yes/no and Kaggle's glioma_tumor, ...,
no_tumor folder names are understood too). It reports accuracy on the named classes, the share of
tumor slices found (not called "notumor") and the share of healthy slices called "notumor", with every slice's
prediction. With `--leave-out-copies-of DATASET` (the models' training data) it first leaves out, and lists, the
slices that prepare_dataset.py would group with a slice of DATASET (copies, mirrored or re-windowed ones too, and
adjacent slices of one scan): a public set that re-publishes training slices would otherwise flatter the models.

`summary` gathers finished cross-validation runs (and robustness files) into one machine-readable table: per
protocol ("stratified" is train.py's `--protocol random`, the paper's; "grouped" keeps near-duplicates together)
and variant, the mean and std of accuracy and macro-F1 over every fold of every seed, per-class recall, parameters,
forward FLOPs, training images/s and wall time, with the device and command of each run; given robustness files,
the shortcut flip rate and the accuracy with test-time views where they were scored. Given `external` outputs,
each entry also gets `cross_source` scores; a run that trained on slices of that folder is refused there.

Each prints a table and writes JSON (robustness also a plot beside it; it rewrites its JSON after each test, marked
`partial` until the last, so that a run stopped at a time limit keeps the tests it finished, the shortcut stress
tests first).
"""

import argparse
import functools
import io
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from scipy import stats
from transformers.utils import logging as transformers_logging

from brain_resnet.augment import augment
from brain_resnet.cli import UsageError, number
from brain_resnet.data import (
    ANY_TUMOUR,
    CACHE_MARGIN,
    Table,
    decode_images,
    load_table,
    open_image,
    run_files,
)
from brain_resnet.engine import logits_function, model_config, model_input
from brain_resnet.external import NOTUMOR, copies_of_dataset, external_files, external_metrics, read_external
from brain_resnet.folds import PROTOCOL_NAMES
from brain_resnet.metrics import forward_flops
from brain_resnet.modeling import VARIANTS, BrainResNetForImageClassification, BrainResNetImageProcessor
from brain_resnet.runs import LIST_OPTIONS, check_lists_unchanged, has_weights, read_json, write_json

# corruption -> strengths, mildest first
CORRUPTIONS = {
    "gaussian_noise": (0.02, 0.05, 0.1),
    "blur": (1.0, 2.0, 3.0),
    "contrast": (0.75, 0.5, 1.5),
    "gamma": (0.75, 1.5, 2.0),
    "jpeg": (75, 50, 20),
    "downscale": (0.5, 0.35, 0.25),
    "rotation": (5, 10, 20),
}
SHORTCUT_TESTS = ("tumor_as_br35h", "notumor_as_figshare")


# ---------------------------------------------------------------- alterations of one raw slice (PIL, seeded)
def as_8bit(image: Image.Image) -> Image.Image:
    """L or RGB: the modes the alterations below work in (16-bit and palette slices are converted)."""
    if image.mode in ("L", "RGB"):
        return image
    if image.mode.startswith("I"):  # 16 or 32-bit integers: their own range onto 0-255
        pixels = np.asarray(image, dtype=np.float64)
        pixels = (pixels - pixels.min()) * 255 / max(np.ptp(pixels), 1)
        return Image.fromarray(pixels.round().astype(np.uint8))
    return image.convert("RGB")


def with_jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality))
    return Image.open(io.BytesIO(buffer.getvalue())).convert(image.mode)


def with_gamma(image: Image.Image, gamma: float) -> Image.Image:
    table = [round(255 * (value / 255) ** gamma) for value in range(256)]
    return image.point(table * len(image.getbands()))


def corrupt(image: Image.Image, corruption: str, strength: float, rng: np.random.Generator) -> Image.Image:
    """One raw slice altered by `corruption` at `strength` (see CORRUPTIONS)."""
    image = as_8bit(image)
    if corruption == "gaussian_noise":
        pixels = np.asarray(image, dtype=np.float32)
        pixels = pixels + rng.normal(0.0, strength * 255, pixels.shape)
        return Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8), image.mode)
    if corruption == "blur":
        return image.filter(ImageFilter.GaussianBlur(strength))
    if corruption == "contrast":
        return ImageEnhance.Contrast(image).enhance(strength)
    if corruption == "gamma":
        return with_gamma(image, strength)
    if corruption == "jpeg":
        return with_jpeg(image, strength)
    if corruption == "downscale":
        width, height = image.size
        return image.resize((max(1, round(width * strength)), max(1, round(height * strength))), Image.BILINEAR)
    if corruption == "rotation":
        return image.rotate(strength * rng.choice((-1, 1)), resample=Image.BILINEAR)
    raise ValueError(f"unknown corruption {corruption!r}")


def reframe(image: Image.Image, frame: float, rng: np.random.Generator) -> Image.Image:
    """Tighter (frame < 1: a crop of that share of each side) or looser (frame > 1: a black border) framing."""
    width, height = image.size
    new_width, new_height = max(1, round(width * frame)), max(1, round(height * frame))
    left = int(rng.integers(0, abs(new_width - width) + 1))
    top = int(rng.integers(0, abs(new_height - height) + 1))
    if frame < 1:
        return image.crop((left, top, left + new_width, top + new_height))
    canvas = Image.new(image.mode, (new_width, new_height))
    canvas.paste(image, (left, top))
    return canvas


def as_br35h(image: Image.Image, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A slice rendered the way the Br35H slices look: their pixel size and aspect, framing, RGB, contrast, JPEG."""
    image = reframe(as_8bit(image).convert("L"), rng.uniform(0.85, 1.25), rng)
    image = image.resize(size, Image.BILINEAR)
    image = ImageEnhance.Contrast(with_gamma(image, float(np.exp(rng.uniform(-0.3, 0.3))))).enhance(
        rng.uniform(0.8, 1.2)
    )
    return with_jpeg(image.convert("RGB"), rng.integers(70, 81))


def as_figshare(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A slice rendered the way the figshare slices look: grayscale, padded to a square, 256 px, fine JPEG."""
    image = ImageOps.pad(as_8bit(image).convert("L"), (256, 256), method=Image.BILINEAR, color=0)
    return with_jpeg(image, rng.integers(90, 96))


# ---------------------------------------------------------------- models and predictions
@dataclass
class FoldModel:
    fold: int
    model: torch.nn.Module
    processor: BrainResNetImageProcessor

    @property
    def size(self) -> int:
        return self.processor.size


@dataclass
class Run:
    """A finished train.py cross-validation run: its settings and a model per fold."""

    path: Path
    settings: dict
    folds: list[FoldModel]


def load_model(folder: Path, device: torch.device) -> tuple[torch.nn.Module, BrainResNetImageProcessor]:
    if not (folder / "config.json").exists():
        raise UsageError(f"{folder} is not a model folder (no config.json)")
    model = BrainResNetForImageClassification.from_pretrained(folder).to(device).eval()
    processor = BrainResNetImageProcessor.from_pretrained(folder)
    return model, processor


def load_run(path: Path, device: torch.device) -> Run:
    saved = read_json(path / "run_args.json")
    if saved is None:
        raise UsageError(f"{path} is not a train.py run (no run_args.json)")
    folds = []
    for folder in sorted(path.glob("fold-*"), key=lambda p: int(p.name.split("-")[1])):
        if has_weights(folder):
            model, processor = load_model(folder, device)
            folds.append(FoldModel(int(folder.name.split("-")[1]), model, processor))
    if not folds:
        raise UsageError(f"{path} has no finished fold (no weights in fold-K/)")
    return Run(path, saved["settings"], folds)


@torch.no_grad()
def predict(model, images: torch.Tensor, processor, device, batch_size: int) -> torch.Tensor:
    """Class probabilities of uint8 (N, 1, S, S) slices, as train.py's evaluation computes them."""
    forward = logits_function(model, device, bf16=device.type == "cuda")  # as train.py evaluates
    probs = [
        torch.softmax(forward(model_input(batch.to(device).float().div_(255), processor)), dim=1).cpu()
        for batch in images.split(batch_size)
    ]
    return torch.cat(probs) if probs else torch.empty(0, model.config.num_labels)


@torch.no_grad()
def average_with_views(
    probs: torch.Tensor, model, margin_images: torch.Tensor, processor, device, batch_size: int, views: int, seed: int
) -> torch.Tensor:
    """`probs` (`predict`'s, of slices as they are) averaged with the probabilities of `views` random views of each
    slice drawn as training draws them, from `margin_images` (uint8 (N, 1, S, S): the same slices at CACHE_MARGIN
    times the model's size)."""
    forward = logits_function(model, device, bf16=device.type == "cuda")
    torch.manual_seed(seed)
    np.random.seed(seed)  # augment draws the lower resolution's factor from numpy
    total = probs.clone()
    for _ in range(views):
        for start in range(0, len(margin_images), batch_size):
            batch = augment(margin_images[start : start + batch_size].to(device), processor.size)
            total[start : start + batch_size] += torch.softmax(forward(model_input(batch, processor)), dim=1).cpu()
    return total / (views + 1)


def decoded(table: Table, rows: np.ndarray, processor, sizes: list[int], alter, workers: int) -> dict:
    """{size: uint8 tensor} of table.images[rows] through the processor, each altered first by alter(row, image)."""
    images = [table.images[row] for row in rows]
    transform = None if alter is None else lambda i, image: alter(int(rows[i]), image)
    return dict(zip(sizes, decode_images(images, processor, sizes, workers, transform), strict=True))


def common_processor(runs: list[Run]) -> BrainResNetImageProcessor:
    """The processor every fold model was trained with (sizes may differ: each size is decoded)."""
    settings = (
        "do_scale_intensity",
        "intensity_percentile",
        "do_crop_foreground",
        "foreground_threshold",
        "crop_margin",
        "foreground_min_piece_share",
    )
    processors = [fold.processor for run in runs for fold in run.folds]
    for processor in processors[1:]:
        if any(getattr(processor, name) != getattr(processors[0], name) for name in settings):
            raise UsageError("the fold models' image processors preprocess differently; evaluate them apart")
    return processors[0]


# ---------------------------------------------------------------- robustness
def conditions(notumor_sizes: list[tuple[int, int]], only: set[str] | None, seed: int) -> list[tuple]:
    """(name, strength, alter(row, image) or None, which rows: 'all' | 'tumor' | 'notumor'), clean first."""

    def corruption(name: str, strength):
        # The same draws for every strength of a corruption: strengths differ in strength alone.
        code = list(CORRUPTIONS).index(name)
        return lambda row, image: corrupt(image, name, strength, np.random.default_rng([seed, code, row]))

    def br35h(row, image):
        generator = np.random.default_rng([seed, 101, row])
        return as_br35h(image, notumor_sizes[generator.integers(len(notumor_sizes))], generator)

    def figshare(row, image):
        return as_figshare(image, np.random.default_rng([seed, 102, row]))

    # The shortcut stress tests first: the summary reads them, and a run cut off at a time limit keeps them.
    listed = [("clean", None, None, "all")]
    if only is None or "tumor_as_br35h" in only:
        listed.append(("tumor_as_br35h", None, br35h, "tumor"))
    if only is None or "notumor_as_figshare" in only:
        listed.append(("notumor_as_figshare", None, figshare, "notumor"))
    for name, strengths in CORRUPTIONS.items():
        if only is None or name in only:
            listed += [(name, strength, corruption(name, strength), "all") for strength in strengths]
    return listed


def shortcut_rates(clean: np.ndarray, altered: np.ndarray, notumor: int, rows, to_notumor: bool) -> dict:
    """How re-rendering moves `rows` across the tumor / notumor line (predictions are class indices).

    to_notumor: the rows are tumor slices made to look healthy, and the flip rate is the share of those the model
    did not call "notumor" as they were but does now; else healthy slices made to look like tumor slices, and the
    flip rate is the share of those it called "notumor" but now calls a tumor."""
    rows = np.asarray(rows)
    was, now = clean[rows] == notumor, altered[rows] == notumor
    if not to_notumor:
        was, now = ~was, ~now
    called = "called_notumor" if to_notumor else "called_tumor"
    return {
        "slices": int(len(rows)),
        f"{called}_clean": float(was.mean()) if len(rows) else None,
        f"{called}_altered": float(now.mean()) if len(rows) else None,
        "flip_rate": float((now & ~was).sum() / (~was).sum()) if (~was).any() else None,
    }


def fold_accuracies(labels, predictions, folds, rows, fold_ids) -> list[float]:
    """Accuracy of the out-of-fold predictions on each fold's share of `rows`."""
    scores = []
    for fold in fold_ids:
        mine = rows[folds[rows] == fold]
        if len(mine):
            scores.append(float((predictions[mine] == labels[mine]).mean()))
    return scores


def mean_std(values: list[float]) -> dict:
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        "folds": values,
    }


def robustness(args: argparse.Namespace) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runs = [load_run(path, device) for path in args.runs]
    for run in runs:
        check_lists_unchanged(run.settings)
    datasets = {run.settings["dataset"] for run in runs}
    if len(datasets) > 1:
        raise UsageError(f"the runs were trained on different datasets ({', '.join(sorted(datasets))})")
    dataset = args.dataset or datasets.pop()
    source_sets = {tuple(run.settings.get("sources") or ()) for run in runs}  # one table: the same rows for all
    if len(source_sets) > 1:
        raise UsageError("the runs were trained on different --sources of the dataset; evaluate them apart")
    sources = list(source_sets.pop()) or None
    lists = {}  # --untyped-tumors and --exclude: one table, so one list of each for all runs
    for name in LIST_OPTIONS:
        named = {run.settings.get(name) for run in runs}
        if len(named) > 1:
            option = "--" + name.replace("_", "-")
            raise UsageError(f"the runs were trained with different {option} lists; evaluate them apart")
        lists[name] = named.pop()
    protocols = {run.settings["protocol"] for run in runs}
    tables = {p: load_table(dataset, p, False, sources=sources, **lists) for p in protocols}
    table = next(iter(tables.values()))
    labels, class_names = table.labels, table.class_names
    if NOTUMOR not in class_names:
        raise UsageError(f"the dataset has no {NOTUMOR!r} class (its classes: {', '.join(class_names)})")
    notumor = class_names.index(NOTUMOR)
    notumor_sizes = [open_image(table.images[i]).size for i in np.flatnonzero(labels == notumor)]
    sizes = sorted({fold.size for run in runs for fold in run.folds})
    margins = {size: round(size * CACHE_MARGIN) for size in sizes}  # the views' crops come from these
    processor = common_processor(runs)
    typed = labels != ANY_TUMOUR  # the 4-class scores have no class for untyped tumours
    # Only the slices some fold model holds out are scored: a one-fold run decodes its fold, not the dataset.
    # (Each slice's corruption is seeded by its row, so this changes no score.)
    held_out = np.zeros(len(labels), dtype=bool)
    for run in runs:
        held_out |= np.isin(tables[run.settings["protocol"]].folds, [fold.fold for fold in run.folds])
    rows_of = {
        "all": np.flatnonzero(typed & held_out),
        "tumor": np.flatnonzero(typed & held_out & (labels != notumor)),
        "notumor": np.flatnonzero(held_out & (labels == notumor)),
    }

    listed = conditions(notumor_sizes, args.only, args.seed)
    clean_predictions = {}
    report = {run.path: {"corruptions": {}, "shortcut": {}} for run in runs}
    for index, (name, strength, alter, which) in enumerate(listed, 1):
        started = time.perf_counter()
        rows = rows_of[which]
        with_views = name == "clean" and args.views > 0
        decode_sizes = sorted({*sizes, *margins.values()}) if with_views else sizes
        caches = decoded(table, rows, processor, decode_sizes, alter, args.workers)
        for run in runs:
            folds = tables[run.settings["protocol"]].folds
            predictions, with_views_predictions = np.full(len(labels), -1), np.full(len(labels), -1)
            for fold in run.folds:
                mine = np.flatnonzero(folds[rows] == fold.fold)  # positions in `rows`
                probs = predict(fold.model, caches[fold.size][mine], fold.processor, device, args.batch_size)
                predictions[rows[mine]] = probs.argmax(dim=1).numpy()
                if with_views:
                    margin_images = caches[margins[fold.size]][mine]
                    probs = average_with_views(
                        probs, fold.model, margin_images, fold.processor, device, args.batch_size, args.views, args.seed
                    )
                    with_views_predictions[rows[mine]] = probs.argmax(dim=1).numpy()
            fold_ids = [fold.fold for fold in run.folds]
            entry = report[run.path]
            if name == "clean":
                clean_predictions[run.path] = predictions
                entry["clean"] = {"accuracy": mean_std(fold_accuracies(labels, predictions, folds, rows, fold_ids))}
                if with_views:
                    scores = fold_accuracies(labels, with_views_predictions, folds, rows, fold_ids)
                    entry["clean"]["accuracy_with_views"] = mean_std(scores)
            elif name in CORRUPTIONS:
                scores = fold_accuracies(labels, predictions, folds, rows, fold_ids)
                entry["corruptions"].setdefault(name, []).append({"strength": strength, "accuracy": mean_std(scores)})
            else:
                scored = rows[np.isin(folds[rows], fold_ids)]
                entry["shortcut"][name] = shortcut_rates(
                    clean_predictions[run.path], predictions, notumor, scored, to_notumor=which == "tumor"
                )
        label = name if strength is None else f"{name} {strength}"
        print(f"[{index}/{len(listed)}] {label}: {len(rows):,} slices, {time.perf_counter() - started:.1f} s")
        if args.output and index < len(listed):  # what is done so far, for a run cut off before the end
            args.output.parent.mkdir(parents=True, exist_ok=True)
            result = robustness_result(args, runs, report, dataset, device)
            write_json(args.output, result | {"partial": {"tests_done": index, "tests": len(listed)}})
    return robustness_result(args, runs, report, dataset, device)


def robustness_result(args: argparse.Namespace, runs: list[Run], report: dict, dataset: str, device) -> dict:
    """The robustness JSON of the tests in `report` so far."""
    return {
        "command": shlex.join(["python", *sys.argv]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dataset": dataset,
        "seed": args.seed,
        "views": args.views,
        "corruptions": {name: list(strengths) for name, strengths in CORRUPTIONS.items()},
        "runs": {
            str(run.path): {
                "model": run.settings["model"],
                "protocol": run.settings["protocol"],
                "folds": [fold.fold for fold in run.folds],
                "image_size": sorted({fold.size for fold in run.folds}),
                "views": args.views,
                **report[run.path],
                "shortcut_flip_rate": report[run.path]["shortcut"].get("tumor_as_br35h", {}).get("flip_rate"),
            }
            for run in runs
        },
    }


def print_robustness(result: dict) -> None:
    for path, run in result["runs"].items():
        clean = run["clean"]["accuracy"]
        heading = f"{path} ({run['model']}, {run['protocol']} folds)"
        print(f"\n{heading}: clean accuracy {clean['mean']:.4f} ± {clean['std']:.4f}")
        if (with_views := run["clean"].get("accuracy_with_views")) is not None:
            print(f"  with {run['views']} test-time views: {with_views['mean']:.4f} ± {with_views['std']:.4f}")
        for name, points in run["corruptions"].items():
            cells = ", ".join(f"{p['strength']}: {p['accuracy']['mean']:.4f}" for p in points)
            print(f"  {name:<15} {cells}")
        for name, rates in run["shortcut"].items():
            shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in rates.items())
            print(f"  {name:<20} {shown}")


def plot_robustness(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["corruptions"])
    names = [n for n in names if any(n in run["corruptions"] for run in result["runs"].values())]
    if not names:
        return
    columns = min(4, len(names))
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for run_path, run in result["runs"].items():
            points = run["corruptions"].get(name, [])
            x = ["clean", *[str(p["strength"]) for p in points]]
            y = [run["clean"]["accuracy"]["mean"], *[p["accuracy"]["mean"] for p in points]]
            ax.plot(x, y, marker="o", label=f"{Path(run_path).name} ({run['model']})")
        ax.set_title(name)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].set_ylabel("held-out accuracy")
    axes.flat[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ---------------------------------------------------------------- external data
def external(args: argparse.Namespace) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = [(path, *load_model(path, device)) for path in args.model]
    class_names = [models[0][1].config.id2label[i] for i in range(models[0][1].config.num_labels)]
    images, kept, unreadable = read_external(external_files(args.data, class_names))
    for line in unreadable:
        print(f"skipped (not a readable image): {line}", file=sys.stderr)
    result = {
        "command": shlex.join(["python", *sys.argv]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "data": str(args.data),
        "skipped": unreadable,
    }
    if args.leave_out_copies_of:
        copies = copies_of_dataset(images, args.leave_out_copies_of)
        result["copies_left_out"] = {
            "of": args.leave_out_copies_of,
            "slices": [{"file": str(kept[i][0].relative_to(args.data)), "copy_of": copies[i]} for i in sorted(copies)],
        }
        print(f"left out {len(copies)} of {len(kept)} slices: copies of {args.leave_out_copies_of}'s", file=sys.stderr)
        if len(copies) == len(kept):
            raise UsageError(f"every slice of {args.data} is a copy of a slice of {args.leave_out_copies_of}")
        images = [image for i, image in enumerate(images) if i not in copies]
        kept = [entry for i, entry in enumerate(kept) if i not in copies]
    truths = [truth for _, truth in kept]
    result["models"] = {}
    caches = {}  # processor settings -> decoded slices: models preprocessing alike share one decoding
    for path, model, processor in models:
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        key = processor.to_json_string()
        if key not in caches:
            (caches[key],) = decode_images(images, processor, [processor.size], args.workers)
        probs = predict(model, caches[key], processor, device, args.batch_size)
        predicted = [names[i] for i in probs.argmax(dim=1).tolist()]
        result["models"][str(path)] = external_metrics(truths, predicted) | {
            "predictions": [
                {"file": str(file.relative_to(args.data)), "truth": truth, "predicted": label, "score": float(p.max())}
                for (file, truth), label, p in zip(kept, predicted, probs, strict=True)
            ]
        }
    return result


def print_external(result: dict) -> None:
    print(f"{'model':<40} {'slices':>7} {'accuracy':>9} {'tumor found':>12} {'notumor spec.':>14}")
    for path, metrics in result["models"].items():
        cells = [metrics[k] for k in ("accuracy", "tumor_found", "notumor_specificity")]
        shown = [f"{v:.4f}" if v is not None else "-" for v in cells]
        print(f"{path:<40} {metrics['slices']:>7} {shown[0]:>9} {shown[1]:>12} {shown[2]:>14}")


# ---------------------------------------------------------------- summary of runs
def variant_name(model: str) -> str:
    """A VARIANTS name as given, or a CONFIG.json's file name without its suffix."""
    return model if model in VARIANTS else Path(model).stem


CROSS_SOURCE_METRICS = ("accuracy", "tumor_found", "notumor_specificity")


def read_external_reports(files: list[Path]) -> dict[str, tuple[str, dict, set[str]]]:
    """{resolved model folder: (data folder name, metrics, the slices `external --leave-out-copies-of` left out)}
    from `evaluation.py external` outputs."""
    scores = {}
    for file in files:
        report = read_json(file)
        if report is None or "models" not in report:
            raise UsageError(f"{file} is not an `evaluation.py external` output")
        data = Path(report["data"]).name
        left_out = {entry["file"] for entry in report.get("copies_left_out", {}).get("slices", ())}
        scores |= {str(Path(model).resolve()): (data, metrics, left_out) for model, metrics in report["models"].items()}
    return scores


def file_endings(files: list[str]) -> frozenset[str]:
    """Every ending (`name`, `class/name`, ...) of each file."""
    paths = [PurePosixPath(file).parts for file in files]
    return frozenset("/".join(parts[i:]) for parts in paths for i in range(len(parts)))


@functools.cache
def run_file_endings(dataset: str, sources: tuple[str, ...], exclude: str | None) -> tuple[frozenset, frozenset]:
    """The endings of the files a run with these settings trained on, and of the other sources' copies of its
    sources' slices (data.run_files); read once for all the runs and folds of a summary that share them."""
    trained, copies = run_files(dataset, list(sources) or None, exclude)
    return file_endings(trained or []), file_endings(copies or [])


def copies_scored(run: Path, settings: dict, data: str, scored: list[str]) -> set[str]:
    """The slices of `scored` (the files of `data`, an `evaluation.py external` folder, that a run's fold models
    were scored on) that are copies of slices of the run's sources: in the dataset, rows of another source that
    share a near-duplicate group with them (a public set re-publishing figshare slices). They are left out of
    its cross-source scores. A run whose training rows include a scored slice is refused (a row's file,
    `<SRC folder>/<class>/<name>` in a dataset of several sources, ending with the slice's `<class>/<name>`): its
    scores there are not of another source. A dataset that is not here (a Hub id offline, a moved folder) cannot
    be checked: said, not fatal."""
    try:
        trained, copies = run_file_endings(
            settings["dataset"], tuple(settings.get("sources") or ()), settings.get("exclude")
        )
    except UsageError as error:
        print(f"note: cannot check that {run} did not train on {data}'s slices: {error}", file=sys.stderr)
        return set()
    seen = [file for file in scored if file in trained]
    if seen:
        raise UsageError(
            f"{run} trained on {len(seen)} of the {len(scored)} slices of {data} it was scored on "
            f"({seen[0]}, ...): its scores there are not cross-source; summarise runs trained without that source "
            "(train.py --sources)"
        )
    return {file for file in scored if file in copies}


def without_slices(metrics: dict, left_out: set[str]) -> dict:
    """A model's `external` metrics recomputed from its predictions without the `left_out` files."""
    kept = [p for p in metrics["predictions"] if p["file"] not in left_out]
    return external_metrics([p["truth"] for p in kept], [p["predicted"] for p in kept])


def cross_source_scores(runs: list[tuple[Path, dict]], scores: dict[str, tuple[str, dict, set[str]]]) -> dict:
    """{data: mean of CROSS_SOURCE_METRICS over the runs' fold models scored on it, how many were, and how many of
    its slices were left out as copies of the runs' sources (`copies_scored`, or `external --leave-out-copies-of`
    before)}. A run that trained on slices of the data it was scored on is refused: its scores there are not of
    another source."""
    by_data, left_out = {}, {}
    for path, results in runs:
        models = {}  # data -> the metrics of the run's fold models scored on it
        for fold in results["folds"]:
            if (found := scores.get(str((path / f"fold-{fold}").resolve()))) is not None:
                data, metrics, left_out_before = found  # by `external --leave-out-copies-of`, already
                models.setdefault(data, []).append(metrics)
                left_out.setdefault(data, set()).update(left_out_before)
        for data, scored in models.items():
            files = list(dict.fromkeys(p["file"] for metrics in scored for p in metrics.get("predictions", ())))
            copies = copies_scored(path, results["args"]["settings"], data, files) if files else set()
            left_out.setdefault(data, set()).update(copies)
            by_data.setdefault(data, []).extend(without_slices(m, copies) if copies else m for m in scored)

    def mean(values: list) -> float | None:  # None where no model had the slices for it (a folder of tumors only)
        values = [value for value in values if value is not None]
        return float(np.mean(values)) if values else None

    return {
        data: {"models": len(metrics), "copies_left_out": len(left_out[data])}
        | {name: mean([m[name] for m in metrics]) for name in CROSS_SOURCE_METRICS}
        for data, metrics in by_data.items()
    }


def summarize_runs(paths: list[Path], robustness_files: list[Path], external_reports: list[Path] = ()) -> dict:
    """Runs grouped by protocol and variant; robustness files add shortcut flip rates, `external` outputs (of the
    runs' fold models on another source) add cross-source scores."""
    groups = {}  # (protocol, variant) -> finished runs
    for path in paths:
        results = read_json(path / "cv_results.json")
        if results is None or not results.get("folds"):
            raise UsageError(f"{path} is not a finished train.py cross-validation run (no folds in cv_results.json)")
        settings = results["args"]["settings"]
        key = (PROTOCOL_NAMES[settings["protocol"]], variant_name(settings["model"]))
        groups.setdefault(key, []).append((path, results))
    shortcut = {}  # run path -> robustness entries, one per file (of the fold models a machine had)
    for file in robustness_files:
        report = read_json(file)
        if report is None or "runs" not in report:
            raise UsageError(f"{file} is not an `evaluation.py robustness` output")
        if partial := report.get("partial"):
            done = f"{partial['tests_done']} of its {partial['tests']} tests"
            print(f"note: {file} holds the first {done}: the run stopped before the rest", file=sys.stderr)
        named = [str(Path(run).resolve()) for run in report["runs"]]
        for run, entry in zip(named, report["runs"].values(), strict=True):
            shortcut.setdefault(run, []).append(entry)
        if not {str(path.resolve()) for path in paths} & set(named):  # moved runs: their scores would go unused
            print(f"note: {file} scored none of these runs (it names {', '.join(report['runs'])})", file=sys.stderr)
    external_scores = read_external_reports(list(external_reports))

    protocols, devices = {}, set()
    for (protocol, variant), runs in sorted(groups.items()):
        folds = [fold for _, results in runs for fold in results["folds"].values()]
        first = runs[0][1]
        settings = first["args"]["settings"]
        config = model_config(settings["model"], first["class_names"])
        flops = forward_flops(BrainResNetForImageClassification(config), settings["image_size"], config.num_channels)
        entry = {
            "runs": [str(path) for path, _ in runs],
            "seeds": [results["args"]["settings"]["seed"] for _, results in runs],
            "folds": len(folds),
            "epochs": settings["epochs"],
            "image_size": settings["image_size"],
            "params": first["params"],
            "forward_gflops": flops / 1e9,
            "device": sorted({fold["device"] for fold in folds}),  # a continued run's folds: several machines
            "commands": [results["args"]["command"] for _, results in runs],
        }
        for metric in ("accuracy", "macro_f1", "roc_auc_macro"):
            values = [fold[metric] for fold in folds if fold.get(metric) is not None]
            entry[f"{metric}_mean"] = float(np.mean(values))
            entry[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        entry["recall"] = {
            name: float(np.mean([fold["recall"][name] for fold in folds])) for name in first["class_names"]
        }
        entry["train_images_per_s"] = float(np.median([fold["train_images_per_s"] for fold in folds]))
        entry["wall_seconds_per_run"] = float(np.mean([results["summary"]["wall_seconds"] for _, results in runs]))
        # Machines that continued a run measured its other folds: each measurement counts by its folds.
        measured = [
            (found["shortcut_flip_rate"], len(found["folds"]))
            for path, _ in runs
            for found in shortcut.get(str(path.resolve()), [])
            if found.get("shortcut_flip_rate") is not None
        ]
        if measured:
            rates, weights = np.array(measured).T
            entry["shortcut_flip_rate"] = float(np.average(rates, weights=weights))
        entry |= accuracy_with_views([found for path, _ in runs for found in shortcut.get(str(path.resolve()), [])])
        if cross_source := cross_source_scores(runs, external_scores):
            entry["cross_source"] = cross_source
        protocols.setdefault(protocol, {})[variant] = entry
        devices.update(entry["device"])
    for protocol, variants in protocols.items():
        for variant, entry in variants.items():
            if variant != "improved" and "improved" in variants:
                paired = paired_difference(groups[(protocol, "improved")], groups[(protocol, variant)])
                if paired is not None:
                    entry["paired_with_improved"] = paired

    def improved(name: str):  # the improved model's, under the honest protocol when it was measured there
        found = [protocols.get(p, {}).get("improved", {}).get(name) for p in ("grouped", "stratified")]
        return next((value for value in found if value is not None), None)

    return {
        "device": ", ".join(sorted(devices)),
        "protocols": protocols,
        "shortcut_flip_rate": improved("shortcut_flip_rate"),
        # models trained on the runs' dataset only, scored on slices of another source
        "cross_source": improved("cross_source"),
        "command": shlex.join(["python", *sys.argv]),
    }


def accuracy_with_views(entries: list[dict]) -> dict:
    """`accuracy_with_views_mean` and `_std` over every fold the robustness entries scored with test-time views,
    and how many `views`; empty where none did. Entries with different numbers of views are not averaged."""
    scored = [entry for entry in entries if "accuracy_with_views" in entry.get("clean", {})]
    if not scored:
        return {}
    views = {entry["views"] for entry in scored}
    if len(views) > 1:
        raise UsageError(f"robustness files scored one run with different numbers of views ({sorted(views)})")
    folds = [accuracy for entry in scored for accuracy in entry["clean"]["accuracy_with_views"]["folds"]]
    return {
        "views": views.pop(),
        "accuracy_with_views_mean": float(np.mean(folds)),
        "accuracy_with_views_std": float(np.std(folds, ddof=1)) if len(folds) > 1 else 0.0,
    }


def paired_difference(improved: list[tuple[Path, dict]], other: list[tuple[Path, dict]]) -> dict | None:
    """The improved model's accuracy minus another variant's, fold by fold over the (seed, fold) pairs both have:
    variants of one protocol share its folds, so each pair differs only in the model. None under two pairs.

    `p_value` is the corrected resampled t-test's (Nadeau & Bengio 2003; for repeated k-fold, Bouckaert & Frank
    2004): cross-validation folds share most of their training slices, so the differences are not independent and a
    plain paired t-test would overstate the evidence; the correction adds test/train size to the variance's 1/n.
    """

    def folds(runs):
        return {
            (results["args"]["settings"]["seed"], fold): scores
            for _, results in runs
            for fold, scores in results["folds"].items()
        }

    ours, theirs = folds(improved), folds(other)
    pairs = sorted(ours.keys() & theirs.keys())
    differences = np.array([ours[key]["accuracy"] - theirs[key]["accuracy"] for key in pairs])
    if len(differences) < 2:
        return None
    mean, std = float(differences.mean()), float(differences.std(ddof=1))
    test_to_train = float(np.mean([ours[key]["num_eval"] / ours[key]["num_train"] for key in pairs]))
    spread = std * np.sqrt(1 / len(differences) + test_to_train)
    if spread > 0:
        t_statistic = mean / spread
        p_value = float(2 * stats.t.sf(abs(t_statistic), df=len(differences) - 1))
    else:  # every pair differs by the same amount
        t_statistic, p_value = (0.0, 1.0) if mean == 0 else (float(np.sign(mean) * np.inf), 0.0)
    return {
        "folds": len(differences),
        "seeds": len({seed for seed, _ in pairs}),
        "improved_minus_this_mean": mean,
        "improved_minus_this_std": std,
        "improved_ahead": int((differences > 0).sum()),
        "ties": int((differences == 0).sum()),
        "corrected_t": float(t_statistic),
        "p_value": p_value,
    }


def print_summary(result: dict) -> None:
    print(f"device: {result['device']}")
    heading = f"{'protocol':<11} {'variant':<14} {'folds':>5} {'accuracy':>17} {'macro-F1':>8} {'params':>11}"
    print(heading + f" {'GFLOPs':>7} {'img/s':>8} {'flip':>6}")
    for protocol, variants in result["protocols"].items():
        for variant, e in variants.items():
            flip = e.get("shortcut_flip_rate")
            print(
                f"{protocol:<11} {variant:<14} {e['folds']:>5} {e['accuracy_mean']:>8.4f} ± {e['accuracy_std']:.4f} "
                f"{e['macro_f1_mean']:>8.4f} {e['params']:>11,} {e['forward_gflops']:>7.2f} "
                f"{e['train_images_per_s']:>8,.0f} {'-' if flip is None else f'{flip:.4f}':>6}"
            )
    for protocol, variants in result["protocols"].items():
        for variant, e in variants.items():
            if (with_views := e.get("accuracy_with_views_mean")) is not None:
                print(
                    f"{protocol}: {variant} with {e['views']} test-time views: {with_views:.4f} ± "
                    f"{e['accuracy_with_views_std']:.4f}"
                )
            if (paired := e.get("paired_with_improved")) is not None:
                print(
                    f"{protocol}: improved minus {variant}, fold by fold over {paired['folds']} folds: "
                    f"{paired['improved_minus_this_mean'] * 100:+.2f} ± {paired['improved_minus_this_std'] * 100:.2f} "
                    f"points; improved ahead in {paired['improved_ahead']}, tied in {paired['ties']}; "
                    f"corrected t-test p = {paired['p_value']:.2f}"
                )


# ---------------------------------------------------------------- command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--output", type=Path, help="JSON file to write (default: print only)")
    common.add_argument("--batch-size", type=number(int, 1), default=256)
    common.add_argument("--workers", type=number(int, 1), default=None, help="decoding processes (default: CPUs)")

    robust = commands.add_parser("robustness", parents=[common], help="corruptions and shortcut stress tests")
    robust.add_argument("runs", nargs="+", type=Path, help="train.py output folders of cross-validation runs")
    robust.add_argument("--dataset", help="the runs' dataset, if it moved since training")
    robust.add_argument(
        "--only",
        type=lambda text: set(text.split(",")),
        help=f"comma list of tests to run: {', '.join([*CORRUPTIONS, *SHORTCUT_TESTS])} (default: all)",
    )
    robust.add_argument("--seed", type=number(int, 0), default=0, help="of the per-slice alterations and the views")
    robust.add_argument(
        "--views",
        type=number(int, 0),
        default=16,
        help="test-time views averaged with each clean slice for an accuracy with views beside the plain one "
        "(default: 16; 0: none)",
    )

    ext = commands.add_parser("external", parents=[common], help="accuracy on slices from another source")
    ext.add_argument("data", type=Path, help="folder with one folder of slices per class (or 'tumor')")
    ext.add_argument("--model", type=Path, action="append", required=True, help="model folder (repeatable)")
    ext.add_argument(
        "--leave-out-copies-of",
        metavar="DATASET",
        help="leave out (and list) the slices that prepare_dataset.py would group with a slice of DATASET, such as "
        "the models' training data: copies, mirrored or re-windowed ones too, and adjacent slices",
    )

    summary = commands.add_parser("summary", help="one table of finished cross-validation runs")
    summary.add_argument("runs", nargs="+", type=Path, help="train.py output folders of cross-validation runs")
    summary.add_argument("--robustness", type=Path, action="append", default=[], help="robustness JSON (repeatable)")
    summary.add_argument(
        "--external",
        type=Path,
        action="append",
        default=[],
        help="`external` JSON of the runs' fold models on another source: cross-source scores (repeatable)",
    )
    summary.add_argument("--output", type=Path, help="JSON file to write (default: print only)")

    args = parser.parse_args(argv)
    if args.command == "robustness" and args.only is not None:
        unknown = args.only - {*CORRUPTIONS, *SHORTCUT_TESTS}
        if unknown:
            parser.error(f"--only: unknown test {sorted(unknown)[0]!r}")
    if args.command != "summary":
        args.workers = args.workers or max(1, min(32, len(os.sched_getaffinity(0))))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    transformers_logging.disable_progress_bar()  # one "Loading weights" bar per fold model would drown the report
    commands = {
        "robustness": (robustness, print_robustness),
        "external": (external, print_external),
        "summary": (lambda a: summarize_runs(a.runs, a.robustness, a.external), print_summary),
    }
    compute, show = commands[args.command]
    try:
        result = compute(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    show(result)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.output, result)
        if args.command == "robustness":
            plot_robustness(result, args.output.with_suffix(".png"))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
