"""The training machinery: model variants, optimiser, precision, one step and one epoch of training, sharded
prediction, checkpoints, signals and seeds."""

import hashlib
import math
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .alignment import source_mean_gap
from .augment import augment, heal_lesions, mirror_hemispheres, paste_lesions
from .cli import UsageError
from .data import ANY_TUMOUR
from .group_dro import GroupWeights, cell_ids
from .modeling import VARIANTS, BrainResNetConfig, BrainResNetForImageClassification, BrainResNetImageProcessor
from .runs import fold_name, read_json, write_json

AVERAGED_WEIGHTS = "averaged_weights.safetensors"  # a checkpoint's weight average (train.py --ema-decay)


def model_config(spec: str, class_names: list[str]) -> BrainResNetConfig:
    try:
        config = BrainResNetConfig(**VARIANTS[spec]) if spec in VARIANTS else BrainResNetConfig.from_json_file(spec)
    except (OSError, ValueError, TypeError) as error:
        raise UsageError(f"--model {spec}: {error}") from None
    config.id2label = dict(enumerate(class_names))
    config.label2id = {name: i for i, name in enumerate(class_names)}
    return config


def trained_model(source: str, option: str) -> BrainResNetForImageClassification:
    """The float32 model at ``source`` (a folder or Hub id) that train.py's ``option`` names; a usage error if
    it cannot be loaded."""
    try:
        return BrainResNetForImageClassification.from_pretrained(source, dtype=torch.float32)
    except (OSError, ValueError) as error:
        raise UsageError(f"{option} {source}: {error}") from None


def lesion_finder(source: str, device: torch.device) -> BrainResNetForImageClassification:
    """The trained model at ``source`` that marks lesions for train.py --heal-prob: float32, eval mode, frozen."""
    return trained_model(source, "--heal-from").to(device).eval().requires_grad_(False)


def pretrained_weights(source: str, config: BrainResNetConfig) -> dict[str, torch.Tensor]:
    """The float32 weights of the trained model at ``source`` (a folder or Hub id) to start training from,
    checked to fit the network ``config`` describes and to name its classes in the same order.

    The familiarity detector's statistics are left out: they describe the old weights' features, and
    make_release.py fits new ones for the new weights.
    """
    trained = trained_model(source, "--init-from")
    names, wanted = (list(c.id2label[i] for i in range(c.num_labels)) for c in (trained.config, config))
    if names != wanted:
        raise UsageError(f"--init-from {source}: its classes {names} are not the dataset's {wanted}")
    weights = {name: value for name, value in trained.state_dict().items() if not name.startswith("familiarity_")}
    try:
        BrainResNetForImageClassification(config).load_state_dict(weights)
    except RuntimeError as error:
        first_problem = str(error).splitlines()[-1].strip()[:160]
        raise UsageError(f"--init-from {source}: its weights do not fit --model's network ({first_problem})") from None
    return weights


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, fused: bool) -> torch.optim.AdamW:
    """AdamW without decay on BatchNorm parameters and biases (decaying them only fights the normalisation)."""
    matrices = [p for p in model.parameters() if p.ndim > 1]
    vectors = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": matrices, "weight_decay": weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, fused=fused)


def model_input(images: torch.Tensor, processor: BrainResNetImageProcessor) -> torch.Tensor:
    """Float (B, 1, H, W) in [0, 1] -> normalised model input, channels_last like the model."""
    return processor.normalize_pixel_values(images).contiguous(memory_format=torch.channels_last)


def configure_backends(device: torch.device) -> None:
    """train.py's CUDA settings: cuDNN times its kernels once for the batch shape (every batch has one), and float32
    matrix products may use TF32."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True


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


def logits_and_features_function(model: torch.nn.Module, device: torch.device, bf16: bool):
    """pixel_values -> (float32 logits, float32 pooled features), under bf16 autocast when asked."""

    def logits_and_features(pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            output = model(pixel_values=pixel_values, output_hidden_states=True)
            features = output.hidden_states[-1].mean(dim=(2, 3))  # = the pooled features the classifier reads
        return output.logits.float(), features.float()

    return logits_and_features


def train_step(
    forward,
    optimizer,
    scheduler,
    accelerator,
    images,
    labels,
    args,
    processor,
    sides=None,
    sources=None,
    group_weights: GroupWeights | None = None,
    lesions=None,
    untyped_healthy_label: int | None = None,
):
    """One optimisation step on cached uint8 slices; returns loss and correct count as device tensors (no sync).

    `sides`: (the tumour sides of these slices, the healthy label) for args.paste_prob and args.mirror_prob;
    `lesions`: (their lesion masks, the healthy label) for args.heal_prob.
    `sources`: (the slices' source ids, the number of sources) for args.match_sources, whose `forward` is a
    logits_and_features_function, and for `group_weights` (args.group_dro), whose groups are the rows' (class,
    source) cells.
    `untyped_healthy_label`: the healthy label, when the slices may include untyped tumours (train.py
    --untyped-tumors; `slice_losses`), which count as correct when called any tumour class.
    """
    groups = None if group_weights is None else cell_ids(labels, *sources)  # before healing and pasting relabel
    if lesions is not None and args.heal_prob:  # first: a healed slice may then get a pasted lesion
        images, labels = heal_lesions(images, labels, *lesions, args.heal_prob)
    if sides is not None and args.paste_prob:
        images, labels = paste_lesions(images, labels, *sides, args.paste_prob, args.dark_lesion_prob)
    if sides is not None and args.mirror_prob:
        images, labels = mirror_hemispheres(images, labels, *sides, args.mirror_prob)
    pixel_values = model_input(
        augment(
            images,
            args.image_size,
            args.remap_prob,
            args.invert_prob,
            args.geometry_only,
            args.jitter_scale or 1.0,  # unset: the recipe's jitter (and old runs' settings, which lack it, match)
            args.gin_prob,
            args.shuffle_prob,
        ),
        processor,
    )
    if args.match_sources:
        logits, features = forward(pixel_values)
        gap = source_mean_gap(features, labels, sources[0], logits.shape[1], sources[1])
        alignment = args.match_sources * gap
    else:
        logits, alignment = forward(pixel_values), 0.0
    per_slice = slice_losses(logits.float(), labels, args.label_smoothing, untyped_healthy_label)
    if group_weights is None:
        loss = per_slice.mean() + alignment
    else:
        loss = group_weights.loss(per_slice, groups, lambda totals: accelerator.reduce(totals, "sum")) + alignment
    accelerator.backward(loss)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    called = logits.argmax(dim=1)
    hits = called == labels
    if untyped_healthy_label is not None:
        hits |= (labels == ANY_TUMOUR) & (called != untyped_healthy_label)
    return loss.detach(), hits.sum()


def slice_losses(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float, healthy_label: int | None = None
) -> torch.Tensor:
    """Each slice's loss: cross-entropy against its class; given `healthy_label`, an untyped tumour's (label
    ANY_TUMOUR) is -log P(any class but healthy), which leaves the tumour classes to share the probability."""
    losses = F.cross_entropy(logits, labels.clamp(min=0), label_smoothing=label_smoothing, reduction="none")
    if healthy_label is None:
        return losses
    healthy = F.one_hot(torch.tensor(healthy_label, device=logits.device), logits.shape[1]).bool()
    tumour = logits.log_softmax(dim=1).masked_fill(healthy, -torch.inf).logsumexp(dim=1)
    return torch.where(labels == ANY_TUMOUR, -tumour, losses)


def train_epoch(
    forward,
    model,
    optimizer,
    scheduler,
    accelerator,
    data,
    train_rows,
    order,
    args,
    processor,
    group_weights=None,
    averaged: AveragedModel | None = None,
):
    """One pass over `train_rows` in `order` (the same permutation on every process, each taking its share);
    `averaged` (`weight_average`) follows the weights after every step."""
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
        sides = None if data.tumour_sides is None else (data.tumour_sides[batch], data.healthy_label)
        sources = None if data.source_ids is None else (data.source_ids[batch], data.num_sources)
        lesions = None if data.lesion_masks is None else (data.lesion_masks[batch], data.healthy_label)
        loss, hits = train_step(
            forward,
            optimizer,
            scheduler,
            accelerator,
            data.train_images[batch],
            data.labels[batch],
            args,
            processor,
            sides,
            sources,
            group_weights,
            lesions,
            data.healthy_label if args.untyped_tumors else None,
        )
        if averaged is not None:
            averaged.update_parameters(model)
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


def derive_seed(*keys) -> int:
    """A seed for one random stream of the run (fold, epoch, purpose, process): resuming replays it exactly."""
    return int(hashlib.sha256(repr(keys).encode()).hexdigest()[:8], 16)


def weight_average(model: torch.nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of `model`'s weights and BatchNorm statistics (train.py --ema-decay), which
    train_epoch updates after every step: a model from the flat region the last steps wander around, which tends to
    hold up better on data unlike the training set (SWAD, Cha et al. 2021)."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def latest_checkpoint(fold_dir: Path) -> tuple[int, Path] | None:
    """(epoch, folder) of the newest complete checkpoint: its progress.json is written last."""
    complete = [
        (read_json(path / "progress.json")["epoch"], path)
        for path in (fold_dir / "checkpoints").glob("epoch-*")
        if (path / "progress.json").exists()
    ]
    return max(complete) if complete else None


def save_checkpoint(
    accelerator: Accelerator,
    fold_dir: Path,
    fold,
    epoch: int,
    extra: dict | None = None,
    averaged: AveragedModel | None = None,
) -> None:
    """Save the training state; `extra`: more state (JSON) kept in the checkpoint's progress.json; `averaged`: the
    weight average, in AVERAGED_WEIGHTS (`load_weight_average` restores it)."""
    path = fold_dir / "checkpoints" / f"epoch-{epoch:04d}"
    accelerator.save_state(str(path))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if averaged is not None:  # the same on every process, as their weights are
            weights = {name: value.contiguous() for name, value in averaged.state_dict().items()}
            save_file(weights, path / AVERAGED_WEIGHTS)
        write_json(path / "progress.json", {"fold": fold, "epoch": epoch, **(extra or {})})
        for older in (fold_dir / "checkpoints").glob("epoch-*"):
            if older != path:
                shutil.rmtree(older)


def load_weight_average(averaged: AveragedModel, checkpoint: Path) -> None:
    averaged.load_state_dict(load_file(checkpoint / AVERAGED_WEIGHTS, device=str(averaged.n_averaged.device)))


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


def device_name(accelerator: Accelerator) -> str:
    return torch.cuda.get_device_name(accelerator.device) if accelerator.device.type == "cuda" else "cpu"


def tensorboard_writer(out: Path, fold):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard" / fold_name(fold)))
