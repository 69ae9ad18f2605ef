"""Train the brain-tumor ResNet with k-fold cross-validation: Accelerate, GPU-resident data, Hub-ready folders.

    accelerate launch train.py --dataset data/brain-tumor-mri-4k --output-dir runs/cv         # 5-fold CV
    accelerate launch train.py --dataset data/all-sources-clean --output-dir runs/release --folds 0 \\
        --paste-prob 0.3                    # the release recipe: fold 0 held out for make_release.py
    python train.py --dataset DATASET --output-dir DIR ...      # one process; the CPU when there is no GPU

DATASET is a Hub dataset id or a folder made by prepare_dataset.py: split `train` (and `test`), columns `image`,
`label` (ClassLabel), `fold` (folds that keep near-duplicates together, --protocol grouped) and `fold_random`
(plain stratified, --protocol random). A dataset without fold columns gets folds by class over near-duplicate
groups of its image hashes (prepare_dataset.py also joins look-alikes and adjacent slices of one patient).

Each fold trains a model from scratch on the other folds and evaluates it on itself; `--folds full` trains on
every fold and evaluates on the `test` split when there is one (with no held-out slices, make_release.py cannot fit
its operating point and calibration: the bundled release is a fold model). Every image is decoded and
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
continues from there, skipping finished folds. Processes training different folds (`--folds K --resume`, one per
fold, as run_matrix.py starts them) may share one DIR: each merges its fold into cv_results.json under a lock.
"""

import argparse
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from filelock import FileLock
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from brain_resnet.cli import HelpFormatter, UsageError, hub_repo_id, model_spec, number
from brain_resnet.data import (
    ANY_TUMOUR,
    CACHE_MARGIN,
    NOTUMOR,
    DeviceData,
    balanced_weights,
    decode_images,
    load_table,
)
from brain_resnet.engine import (
    GracefulStop,
    build_optimizer,
    configure_backends,
    derive_seed,
    device_name,
    latest_checkpoint,
    lesion_finder,
    load_weight_average,
    logits_and_features_function,
    logits_function,
    model_config,
    native_bf16,
    predict,
    pretrained_weights,
    save_checkpoint,
    tensorboard_writer,
    train_epoch,
    weight_average,
)
from brain_resnet.folds import FOLD_COLUMNS
from brain_resnet.group_dro import GroupWeights, cell_ids
from brain_resnet.hub import publish, save_model_folder
from brain_resnet.metrics import classification_metrics, eval_record, fold_timing, summarize
from brain_resnet.modeling import VARIANTS, BrainResNetForImageClassification, BrainResNetImageProcessor
from brain_resnet.reports import fold_summary, training_info, write_reports
from brain_resnet.runs import (
    FULL,
    append_jsonl,
    check_resume,
    fold_name,
    is_finished,
    read_json,
    run_settings,
    write_json,
)
from brain_resnet.style_mixing import add_style_mixing

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "model_card.md"


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="train.py", description=__doc__, formatter_class=HelpFormatter)
    data = parser.add_argument_group("data and folds")
    data.add_argument("--dataset", required=True, help="Hub dataset id or local folder from prepare_dataset.py")
    data.add_argument("--output-dir", required=True, type=Path, help="folder of the run (see above)")
    data.add_argument(
        "--folds",
        default="all",
        type=parse_folds,
        help="all, fold numbers such as 0,1, full (one model on all the data, nothing held out), or a mix: all,full",
    )
    data.add_argument(
        "--protocol",
        default="grouped",
        choices=FOLD_COLUMNS,
        help="grouped: folds keep near-duplicate slices together; random: plain stratified folds",
    )
    data.add_argument(
        "--sources",
        type=lambda text: sorted(set(text.split(","))),
        help="train and evaluate on the rows of these sources only (the dataset's `source` column), such as "
        "figshare,br35h for brain-tumor-mri-4k within a multi-source dataset, or of one class of a source: "
        "figshare,br35h,sartaj/notumor adds sartaj's healthy slices only (default: every row)",
    )
    data.add_argument(
        "--untyped-tumors",
        metavar="LIST",
        help="a list of the dataset's files (its `file` column, one per line, `#` comments: the format of "
        "prepare_dataset.py --exclude, such as results/label-audit/doubtful-notumor.txt) that show a tumor of no "
        "known class, whatever their label: they train as a tumor, loss -log P(any tumor class), and no 4-class "
        "score counts them",
    )
    data.add_argument(
        "--exclude",
        metavar="LIST",
        help="a list of the dataset's files in the same format, left out of training and of every score as if the "
        "dataset had not had them; the other slices keep their folds (a per-run prepare_dataset.py --exclude)",
    )
    recipe = parser.add_argument_group(
        "model and recipe", "the defaults are the recipe of the GPU runs and the release"
    )
    recipe.add_argument(
        "--model",
        default="improved",
        type=model_spec,
        help=f"{', '.join(VARIANTS)} (resnet34 is the baseline, no-* the ablations) or a CONFIG.json",
    )
    recipe.add_argument(
        "--init-from",
        metavar="MODEL",
        help="start every fold from this trained model's weights (a folder such as release/, or a Hub id) instead "
        "of random ones: fine-tuning. Its network must be --model's and its classes the dataset's",
    )
    recipe.add_argument("--epochs", type=number(int, 1), default=60, help="epochs per fold")
    recipe.add_argument("--batch-size", type=number(int, 1), default=128, help="global batch, split over processes")
    recipe.add_argument("--image-size", type=number(int, 32), default=128, help="model input side in pixels")
    recipe.add_argument("--lr", type=number(float, 0, low_inclusive=False), default=2e-3, help="peak AdamW lr")
    recipe.add_argument("--weight-decay", type=number(float, 0), default=0.05, help="AdamW decay of the weights")
    recipe.add_argument("--warmup", type=number(float, 0, 1), default=0.05, help="fraction of steps warming up")
    recipe.add_argument("--label-smoothing", type=number(float, 0, 1), default=0.1, help="of the training loss")
    recipe.add_argument(
        "--ema-decay",
        metavar="DECAY",
        type=number(float, 0, 1),
        default=0.0,
        help="keep an exponential moving average of the weights (and BatchNorm statistics), updated every step "
        "with this decay (0.995: about the last 200 steps), and evaluate and save it instead of the last weights; "
        "the log's eval_accuracy_raw is the last weights' (0: off)",
    )
    recipe.add_argument("--seed", type=number(int, 0), default=42, help="of weights, batches and augmentation")
    shortcut = parser.add_argument_group(
        "against the source shortcut",
        "ways to stop a slice's source telling its class, each off by default (the release recipe pastes\n"
        "lesions: make cpu-release); results/README.md records how each fared",
    )

    def add_share(flag: str, text: str) -> None:
        shortcut.add_argument(flag, metavar="SHARE", type=number(float, 0, 1), default=0.0, help=text)

    add_share(
        "--paste-prob",
        "share of the healthy slices that train with the lesion of a glioma or meningioma slice of the batch "
        "added at the same place, labelled as that tumour, so that a healthy slice's source stops meaning healthy",
    )
    add_share(
        "--dark-lesion-prob",
        "share of the pasted lesions (--paste-prob) subtracted instead of added: a dark mass, as tumours that "
        "are hypointense on their sequence look, where every lesion the 4k data lends is bright",
    )
    add_share(
        "--mirror-prob",
        "share of the axial and coronal glioma and meningioma slices that train as one half of the brain and "
        "its mirror image: the tumour's half (label kept) or the healthy half (labelled notumor), each as likely. "
        "The healthy mirror images are healthy brains in the tumour source's sequence and planes, which the 4k "
        "data lacks",
    )
    add_share(
        "--heal-prob",
        "share of the training slices that have a region filled from its surroundings: for half of the tumour "
        "slices among them too asymmetric to mirror (sagittal, mostly), their lesion as --heal-from's model sees it, "
        "relabelled notumor (a healthy brain in the tumour source's plane and sequence, which the 4k data lacks); "
        "for the others, another slice's lesion region, label kept, so that a filled patch tells nothing",
    )
    shortcut.add_argument(
        "--heal-from",
        metavar="MODEL",
        help="the trained model (a fold-K/ folder) whose Grad-CAM marks the lesions for --heal-prob; it must not "
        "have seen the folds this run holds out",
    )
    shortcut.add_argument(
        "--geometry-only",
        action="store_true",
        help="augment with zoom, rotation, shift and flips only, without the intensity, blur, resolution and noise "
        "jitter: slices keep their source's look. Tried on the paper's protocol, where test slices share the "
        "training slices' scanners: no gain there, and half as many of another source's tumors found "
        "(results/cpu-geometry-ab)",
    )
    shortcut.add_argument(
        "--jitter-scale",
        type=number(float, 0, 4, low_inclusive=False),
        help="widen (> 1) or narrow the intensity, blur, resolution and noise jitter: the intensity and noise "
        "ranges and every step's probability times this (default: 1, the recipe's; 2 was tried against the source "
        "shortcut and rejected: "
        "results/cpu-jitter-ab)",
    )
    add_share(
        "--remap-prob",
        "share of training views whose intensities go through a random non-monotonic curve, so that the "
        "MRI sequence (which gives away the source in the 4k data) stops being a cue",
    )
    add_share(
        "--invert-prob",
        "share of training views whose head intensities are inverted, background kept black: one fixed "
        "reversal of tissue contrast, roughly T1 <-> T2, for the same purpose",
    )
    add_share(
        "--gin-prob",
        "share of training views whose head goes through a random shallow convolutional network mixed with "
        "itself (GIN, Ouyang et al. 2022; brain_resnet/augment.py random_network_contrast): a new, locally varying "
        "tissue contrast, as between MRI sequences, for the same purpose (0.5 was tried against the source "
        "shortcut and rejected twice: results/cpu-gin-ab, results/cpu-gin-healthy-only-ab)",
    )
    add_share(
        "--shuffle-prob",
        "share of training views whose four quadrants change places (brain_resnet/augment.py shuffle_quadrants): "
        "a lesion keeps its look, the head's outline goes, so that the slice's plane (sagittal and coronal slices "
        "are all tumors in the 4k data) stops being a cue (0.3 was tried against the source shortcut and rejected: "
        "results/cpu-shuffle-ab)",
    )
    add_share(
        "--mix-styles",
        "share of the training slices whose feature maps, after the first two residual stages, take a random "
        "mixture of their own channel statistics and another slice's (MixStyle; brain_resnet/style_mixing.py), so "
        "that a source's look stops telling the class (0: off; 0.5 was tried against the source shortcut and "
        "rejected: results/cpu-mixstyle-ab)",
    )
    shortcut.add_argument(
        "--balance-sources",
        action="store_true",
        help="draw each epoch's training slices with every source equally likely (with replacement), so that a "
        "small source weighs as much as a large one",
    )
    shortcut.add_argument(
        "--match-sources",
        metavar="WEIGHT",
        type=number(float, 0),
        default=0.0,
        help="weight of a penalty on how far apart the sources' mean pooled features lie within each class of a "
        "batch, so that a source seen with one class only stops meaning that class (brain_resnet/alignment.py). "
        "Needs a `source` column (0: off)",
    )
    shortcut.add_argument(
        "--group-dro",
        metavar="STEP",
        type=number(float, 0),
        default=0.0,
        help="train with online group DRO over the (class, source) cells, the adversary's step size STEP (0.01 in "
        "the paper; brain_resnet/group_dro.py): the loss weighs most the cell the model does worst on, however "
        "few its slices. Needs a `source` column (0: off)",
    )
    machine = parser.add_argument_group("machine and run")
    machine.add_argument(
        "--mixed-precision",
        choices=("auto", "bf16", "no"),
        default="auto",
        help="auto: bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16 or AMX), else float32",
    )
    machine.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, help="torch.compile the training step (default: on CUDA)"
    )
    machine.add_argument(
        "--compile-mode",
        choices=("reduce-overhead", "default", "max-autotune", "max-autotune-no-cudagraphs"),
        help="torch.compile's mode (default: reduce-overhead on one process, default under several). "
        "reduce-overhead replays each step as CUDA graphs: one eager process launches kernels too slowly to keep a "
        "GPU busy, and benchmarks/bench_train.py measured 2.6x its images/s on an H200",
    )
    machine.add_argument(
        "--workers", type=number(int, 1), help="image-decoding processes (default: the cores per process)"
    )
    machine.add_argument(
        "--save-every",
        type=number(int, 1),
        help="epochs between resumable checkpoints (default: 1 on the CPU, 10 on CUDA, where an epoch takes less "
        "time than a checkpoint); SIGINT and SIGTERM always checkpoint",
    )
    machine.add_argument("--resume", action="store_true", help="continue the run in --output-dir")
    hub = parser.add_argument_group("Hub")
    hub.add_argument(
        "--push-to-hub", metavar="REPO_ID", type=hub_repo_id, help="upload full/ (else the first fold) with its card"
    )
    hub.add_argument(
        "--hub-model-id",
        metavar="REPO_ID",
        type=hub_repo_id,
        help="the Hub repo full/ is to be published at, named by its model card (default: --push-to-hub's)",
    )
    args = parser.parse_args(argv)
    if args.geometry_only and (args.remap_prob or args.invert_prob or args.gin_prob or args.jitter_scale):
        parser.error(
            "--geometry-only leaves intensities alone: it cannot go with --remap-prob, --invert-prob, --gin-prob or "
            "--jitter-scale"
        )
    if args.dark_lesion_prob and not args.paste_prob:
        parser.error("--dark-lesion-prob darkens pasted lesions: it needs --paste-prob")
    if bool(args.heal_prob) != bool(args.heal_from):
        parser.error("--heal-prob and --heal-from go together: the model marks the lesions that are healed")
    if args.untyped_tumors and (args.group_dro or args.match_sources):
        parser.error("--untyped-tumors has no class for --group-dro's cells or --match-sources' class means")
    if args.ema_decay == 1:
        parser.error("--ema-decay 1 would keep the initial weights: use a decay below 1")
    if args.hub_model_id and args.push_to_hub and args.hub_model_id != args.push_to_hub:
        parser.error("--hub-model-id and --push-to-hub name different repos")
    args.hub_model_id = args.hub_model_id or args.push_to_hub
    args.command = shlex.join(["train.py", *(sys.argv[1:] if argv is None else argv)])
    return args


def expand_folds(tokens: list, num_folds: int) -> list:
    """The folds to train, in order: cross-validation folds, then the full model."""
    wrong = [t for t in tokens if isinstance(t, int) and t >= num_folds]
    if wrong:
        raise UsageError(f"--folds {wrong[0]}: the dataset has folds 0 to {num_folds - 1}")
    folds = set(range(num_folds)) if "all" in tokens else {t for t in tokens if isinstance(t, int)}
    return sorted(folds) + ([FULL] if FULL in tokens else [])


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
                publish(out, results, args.push_to_hub, MODEL_CARD_TEMPLATE.read_text())
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
    # Under DDP, inductor skips CUDA graphs for BatchNorm's buffer updates (pytorch/pytorch#139207).
    args.compile_mode = args.compile_mode or ("reduce-overhead" if accelerator.num_processes == 1 else "default")
    args.save_every = args.save_every or (10 if on_cuda else 1)
    configure_backends(accelerator.device)

    with GracefulStop() as stop:
        started = time.perf_counter()
        table = load_table(
            args.dataset,
            args.protocol,
            FULL in args.folds,
            sources=args.sources,
            untyped_tumors=args.untyped_tumors,
            exclude=args.exclude,
        )
        if args.balance_sources and table.sources is None:
            raise UsageError(f"--balance-sources: dataset {args.dataset!r} has no source column")
        num_folds = int(table.folds.max()) + 1
        selected = expand_folds(args.folds, num_folds)
        config = model_config(args.model, table.class_names)
        start_weights = pretrained_weights(args.init_from, config) if args.init_from else None
        pending = [fold for fold in selected if not is_finished(out, results, fold)]

        processor = BrainResNetImageProcessor(size=args.image_size, num_channels=config.num_channels)
        workers = args.workers or max(1, len(os.sched_getaffinity(0)) // accelerator.num_processes)
        cache_size = round(args.image_size * CACHE_MARGIN)
        accelerator.print(f"Decoding {len(table.images):,} slices at {cache_size} and {args.image_size} px ...")
        train_images, eval_images = decode_images(table.images, processor, [cache_size, args.image_size], workers)
        data = DeviceData(
            train_images.to(accelerator.device),
            eval_images.to(accelerator.device),
            torch.from_numpy(table.labels).to(accelerator.device),
            table,
        )
        if args.untyped_tumors:
            data.healthy_label = table.class_names.index(NOTUMOR)
            accelerator.print(
                f"{(table.labels == ANY_TUMOUR).sum()} slices are tumors of unknown type (each fold's model trains "
                "on those outside its held-out fold)"
            )
        if args.mirror_prob or args.paste_prob:
            data.find_tumour_sides()
        if args.heal_prob:
            data.find_lesion_masks(lesion_finder(args.heal_from, accelerator.device), processor, args.image_size)
        if args.match_sources or args.group_dro:
            data.find_source_ids("--match-sources" if args.match_sources else "--group-dro")
        for fold in pending:
            if (train_count := len(data.indices(fold)[0])) < args.batch_size:
                raise UsageError(f"{fold_name(fold)} has {train_count} training images, fewer than --batch-size")
        # Only now, every check passed: a command refused above leaves no run behind to block its corrected rerun.
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
        accelerator.print(
            f"{len(table.labels):,} images decoded in {time.perf_counter() - started:.1f} s; training "
            f"{', '.join(fold_name(f) for f in pending)} on {device_name(accelerator)} x {accelerator.num_processes} "
            f"({'bf16 autocast' if args.bf16 else 'float32'}, compile {args.compile_mode if args.compile else 'off'})"
        )
        for fold in pending:
            finished = train_fold(fold, args, accelerator, data, config, processor, stop, results, start_weights)
            if not finished or (fold != pending[-1] and stop.requested(accelerator)):
                name = signal.Signals(stop.signal).name if stop.signal else "a signal"
                resume = args.command if args.resume else f"{args.command} --resume"
                launcher = "accelerate launch" if accelerator.num_processes > 1 else "python"
                accelerator.print(f"Stopped by {name}; continue with: {launcher} {resume}")
                return 128 + (stop.signal or signal.SIGTERM)
    if args.push_to_hub and accelerator.is_main_process:
        publish(out, results, args.push_to_hub, MODEL_CARD_TEMPLATE.read_text())
    return 0


# ---------------------------------------------------------------- one fold
def train_fold(
    fold, args, accelerator, data: DeviceData, config, processor, stop, results: dict, start_weights=None
) -> bool:
    """Train one fold from scratch or from `start_weights` (or from its checkpoint), save its model folder and
    record it in results.

    Returns False when stopped by a signal, with a checkpoint to resume from.
    """
    out, main = args.output_dir, accelerator.is_main_process
    fold_dir, table = out / fold_name(fold), data.table
    train_rows, eval_rows = data.indices(fold)
    steps_per_epoch = len(train_rows) // args.batch_size

    torch.manual_seed(derive_seed(args.seed, fold, "init"))
    model = BrainResNetForImageClassification(config)
    if start_weights is not None:
        model.load_state_dict(start_weights)
    # channels_last: tensor-core convolutions on CUDA and oneDNN's bf16 ones on the CPU both run faster in it.
    model.to(accelerator.device, memory_format=torch.channels_last)
    if args.mix_styles:
        add_style_mixing(model, args.mix_styles)
    optimizer = build_optimizer(model, args.lr, args.weight_decay, fused=accelerator.device.type == "cuda")
    total_steps = steps_per_epoch * args.epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(args.warmup * total_steps), total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    group_weights = None
    if args.group_dro:
        cells = cell_ids(data.labels[train_rows], data.source_ids[train_rows], data.num_sources)
        present = torch.bincount(cells, minlength=len(table.class_names) * data.num_sources) > 0
        group_weights = GroupWeights(present, args.group_dro)
    averaged = weight_average(accelerator.unwrap_model(model), args.ema_decay) if args.ema_decay else None
    start_epoch = 0
    if (checkpoint := latest_checkpoint(fold_dir)) is not None:
        start_epoch = checkpoint[0]
        accelerator.load_state(str(checkpoint[1]))
        if group_weights is not None:
            group_weights.load_state_dict(read_json(checkpoint[1] / "progress.json")["group_weights"])
        if averaged is not None:
            load_weight_average(averaged, checkpoint[1])
        accelerator.print(f"{fold_name(fold)}: resuming after epoch {start_epoch}")
    # Only training is compiled: evaluation is a tenth of the work, not worth a second (no-grad) compilation.
    # Folds after the first reuse the first one's compiled code, new parameters as graph inputs (CUDA graphs are
    # recorded again for them).
    compiled = torch.compile(model, mode=args.compile_mode) if args.compile else model
    outputs = logits_and_features_function if args.match_sources else logits_function
    train_forward = outputs(compiled, accelerator.device, args.bf16)
    # On the CPU, held-out scores come from float32, as the Space and make_release.py compute (bf16 would flip a
    # few borderline slices); on CUDA evaluation stays in the training precision.
    eval_bf16 = args.bf16 and accelerator.device.type == "cuda"
    evaluated = model if averaged is None else averaged.module  # the model that is saved
    eval_forward = logits_function(evaluated, accelerator.device, eval_bf16)

    eval_labels = table.labels[eval_rows.cpu().numpy()]
    source_weights = None
    if args.balance_sources:
        source_weights = balanced_weights([table.sources[i] for i in train_rows.tolist()])
    eval_batch = args.batch_size // accelerator.num_processes
    writer = tensorboard_writer(out, fold) if main else None
    bar = tqdm(
        total=args.epochs, initial=start_epoch, desc=fold_name(fold), unit="epoch", disable=not main, dynamic_ncols=True
    )
    fold_started, logits = time.perf_counter(), None
    for epoch in range(start_epoch, args.epochs):
        epoch_started = time.perf_counter()
        # Seeds per epoch rather than one stream: a resumed run draws exactly what the uninterrupted one drew.
        generator = torch.Generator().manual_seed(derive_seed(args.seed, fold, epoch))
        if source_weights is None:
            order = torch.randperm(len(train_rows), generator=generator)
        else:
            order = torch.multinomial(source_weights, len(train_rows), replacement=True, generator=generator)
        torch.manual_seed(derive_seed(args.seed, fold, epoch, "augment", accelerator.process_index))
        np.random.seed(derive_seed(args.seed, fold, epoch, "augment", accelerator.process_index))
        record = {"fold": fold, "epoch": epoch + 1, "epochs": args.epochs}
        record |= train_epoch(
            train_forward,
            model,
            optimizer,
            scheduler,
            accelerator,
            data,
            train_rows,
            order,
            args,
            processor,
            group_weights,
            averaged,
        )
        if group_weights is not None:
            record["group_weights"] = group_weights.state_dict()["weights"]
        if len(eval_rows):
            logits = predict(eval_forward, evaluated, accelerator, data.eval_images, eval_rows, eval_batch, processor)
            record |= eval_record(logits, eval_labels)
            if averaged is not None:
                raw_forward = logits_function(model, accelerator.device, eval_bf16)  # the last weights
                raw = predict(raw_forward, model, accelerator, data.eval_images, eval_rows, eval_batch, processor)
                record["eval_accuracy_raw"] = eval_record(raw, eval_labels)["eval_accuracy"]
        last = epoch + 1 == args.epochs
        stopping = not last and stop.requested(accelerator)
        if not last and ((epoch + 1) % args.save_every == 0 or stopping):
            extra = None if group_weights is None else {"group_weights": group_weights.state_dict()}
            save_checkpoint(accelerator, fold_dir, fold, epoch + 1, extra, averaged)
        record["epoch_seconds"] = time.perf_counter() - epoch_started
        if main:
            append_jsonl(out / "log.jsonl", record)
            if writer is not None:
                for name, value in record.items():
                    if name not in ("fold", "epoch", "epochs", "group_weights"):
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
            "compile": args.compile and args.compile_mode,
            "final_train_loss": record["train_loss"],
        }
        if logits is not None:
            sources = [table.sources[i] for i in eval_rows.tolist()] if table.sources is not None else None
            probs = torch.softmax(logits, dim=1).numpy()
            entry |= {"eval_split": "test" if fold == FULL else f"fold {fold}", "eval_loss": record["eval_loss"]}
            entry |= classification_metrics(eval_labels, probs, table.class_names, sources)
        save_fold(fold, args, accelerator.unwrap_model(evaluated), processor, entry, results)
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    return True


def save_fold(fold, args, model, processor, entry: dict, results: dict) -> None:
    """Write the fold's model folder and its cv_results.json entry; only then drop its checkpoints."""
    out = args.output_dir
    # Other processes may be training other folds of this run (one process per fold on one GPU): cv_results.json
    # is re-read and extended under a lock, so that each keeps the others' folds.
    with FileLock(out / ".cv_results.lock"):
        saved = read_json(out / "cv_results.json", default={})
        if FULL in saved:
            results[FULL] = saved[FULL]
        if saved.get("folds") or fold != FULL:
            results.setdefault("folds", {}).update(saved.get("folds", {}))
        if fold == FULL:
            results[FULL] = entry
        else:
            results["folds"][str(fold)] = entry
        if results.get("folds"):
            results["summary"] = summarize(results["folds"])
        model.config.training_info = training_info(args, fold, entry, results)
        save_model_folder(model, processor, out / fold_name(fold), half_storage=fold == FULL)
        write_json(out / "cv_results.json", results)
        shutil.rmtree(out / fold_name(fold) / "checkpoints", ignore_errors=True)
        write_reports(out, results, MODEL_CARD_TEMPLATE.read_text(), args.hub_model_id)
    print(fold_summary(fold, entry))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except UsageError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
