"""What the brain-tumor ResNet looked at: Grad-CAM, SE channel attention per stage, multi-scale stem responses.

torch + numpy only, so notebooks and scripts can use it as well as the Space. Every map comes back as a float32
numpy array of the input's height and width, scaled to [0, 1], row 0 at the top: it lies directly over the image
the model saw (the image processor's `preprocess_one` output).

For speed, freeze the parameters (`model.requires_grad_(False)`): gradients are only ever taken with respect to the
Grad-CAM target feature map, so the backbone then runs without recording an autograd graph.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Explanation:
    """Everything the Space shows for one slice, from a single forward pass."""

    probabilities: np.ndarray  # (num_labels,), calibrated when the model carries a calibration temperature
    unfamiliarity: float | None  # above 1: unlike the training data; None for a model without the detector
    grad_cams: np.ndarray  # (num_labels, H, W): Grad-CAM of every class
    se_weights: list[np.ndarray | None]  # per stage: (SE blocks, channels); None for a stage without SE
    stage_maps: list[np.ndarray]  # per stage: (H, W) output activation weighted by its last SE block's weights
    stem_maps: list[np.ndarray]  # per multi-scale stem branch: (H, W) mean absolute response; empty for a conv stem


def last_stage(model: nn.Module) -> nn.Module:
    """The default Grad-CAM target: the last stage, whose output feeds global pooling and the classifier."""
    return model.brain_resnet.encoder.stages[-1]


def stem_branches(model: nn.Module) -> list[nn.Module]:
    """The multi-scale stem's parallel convolutions; none for ResNet's single-conv stem."""
    return list(getattr(model.brain_resnet.embedder.stem, "branches", []))


def se_blocks_per_stage(model: nn.Module) -> list[int]:
    """How many of each stage's blocks carry SE attention (the Inception reduction blocks carry none)."""
    return [
        sum(getattr(layer, "attention", None) is not None for layer in stage.layers)
        for stage in model.brain_resnet.encoder.stages
    ]


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) -> (N, *size), bilinear."""
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def scale_maps(maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) -> (N, *size): bilinear upsampling, then each map min-max scaled to [0, 1] (a flat map gives 0)."""
    return normalise(upsample(maps, size))


def normalise(maps: torch.Tensor) -> np.ndarray:
    """(N, H, W): each map min-max scaled to [0, 1] (a flat map gives 0), as float32 numpy."""
    maps = maps - maps.amin(dim=(1, 2), keepdim=True)
    peak = maps.amax(dim=(1, 2), keepdim=True)
    maps = torch.where(peak > 1e-12, maps / peak.clamp_min(1e-12), torch.zeros_like(maps))
    return maps.detach().cpu().numpy().astype(np.float32)


def _first_tensor(output):
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def gradients_stop_at(layer: nn.Module) -> Iterator[list[torch.Tensor]]:
    """
    Swap `layer`'s output feature map for a detached copy that requires grad, so that backward passes end there
    (the only gradient Grad-CAM needs). Yields a list that receives that feature map on every forward.
    """
    feature_maps: list[torch.Tensor] = []

    def make_leaf(module, inputs, output):
        leaf = _first_tensor(output).detach().requires_grad_()
        feature_maps.append(leaf)
        return (leaf, *output[1:]) if isinstance(output, tuple) else leaf

    handle = layer.register_forward_hook(make_leaf)
    try:
        yield feature_maps
    finally:
        handle.remove()


@contextmanager
def recorded_outputs(modules: list[nn.Module]) -> Iterator[list[torch.Tensor]]:
    """Yields a list that receives each module's output, in call order, while the context is open."""
    outputs: list[torch.Tensor] = []
    handles = [module.register_forward_hook(lambda m, i, o: outputs.append(o.detach())) for module in modules]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def _logits(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output


def cams_from(
    logits: torch.Tensor, feature_maps: list[torch.Tensor], class_indices: list[int], size: tuple[int, int]
) -> torch.Tensor:
    """
    Grad-CAM, (B, len(class_indices), *size) before scaling: for each class, the channel weights are the spatial mean
    of d(score)/d(feature map), and the map is the ReLU of the weighted channel sum, upsampled. A mirror-averaging
    model records a second feature map, its mirror image's, which carries the other half of the score: its weighted
    sum is upsampled, flipped back onto the slice and added before the ReLU, so that the map accounts for the whole
    score (and a class's map is empty only if no region of either view raised it).
    """
    cams = []
    for position, class_index in enumerate(class_indices):
        # Samples are independent in eval mode, so the gradient of the batch sum is every sample's own gradient.
        gradients = torch.autograd.grad(
            logits[:, class_index].sum(), feature_maps, retain_graph=position < len(class_indices) - 1
        )
        sums = [(g.mean(dim=(2, 3), keepdim=True) * f).sum(dim=1) for g, f in zip(gradients, feature_maps, strict=True)]
        if len(sums) == 1:
            cams.append(upsample(F.relu(sums[0]), size))
        else:
            own, mirror = (upsample(view, size) for view in sums)
            cams.append(F.relu(own + mirror.flip(-1)))
    return torch.stack(cams, dim=1).detach()


def _check_eval(model: nn.Module) -> None:
    if model.training:
        raise ValueError("call model.eval() first: in training mode a forward pass updates BatchNorm statistics")


def grad_cam(
    model: nn.Module,
    pixel_values: torch.Tensor,
    class_index: int | None = None,
    target_layer: nn.Module | None = None,
) -> np.ndarray:
    """
    Grad-CAM (Selvaraju et al., 2017) of a batch, upsampled to the input size and scaled to [0, 1] per map.

    Args:
        model: a classifier in eval mode whose output is logits or has `.logits`.
        pixel_values: (B, C, H, W) model input.
        class_index: the class to explain; None explains every class from one forward pass.
        target_layer: the module whose output feature map is explained (default: the BrainResNet's last stage).

    Returns:
        (B, H, W) for one class, (B, num_labels, H, W) for all.
    """
    _check_eval(model)
    target_layer = target_layer if target_layer is not None else last_stage(model)
    with gradients_stop_at(target_layer) as feature_maps, torch.enable_grad():
        logits = _logits(model(pixel_values))
    classes = list(range(logits.shape[1])) if class_index is None else [class_index]
    size = tuple(pixel_values.shape[-2:])
    cams = cams_from(logits, feature_maps, classes, size)
    batch, num_classes = cams.shape[:2]
    maps = normalise(cams.reshape(batch * num_classes, *size)).reshape(batch, num_classes, *size)
    return maps if class_index is None else maps[:, 0]


def group_by_stage(attentions: tuple[torch.Tensor, ...], blocks_per_stage: list[int]) -> list[torch.Tensor | None]:
    """The model's flat tuple of per-block SE weights (B, C) -> per stage (B, blocks, C); None for a stage without."""
    groups, start = [], 0
    for count in blocks_per_stage:
        groups.append(torch.stack(attentions[start : start + count], dim=1) if count else None)
        start += count
    return groups


def attention_weighted_maps(
    stage_outputs: tuple[torch.Tensor, ...], stage_weights: list[torch.Tensor | None]
) -> list[torch.Tensor]:
    """
    Each stage's output (B, C, h, w) averaged over channels with the weights its last SE block gave them: where the
    channels that attention turned up respond. A stage without SE gets the plain channel mean. Returns (B, h, w) maps.
    """
    maps = []
    for output, weights in zip(stage_outputs, stage_weights, strict=True):
        if weights is None:
            maps.append(output.mean(dim=1))
        else:
            last_block = weights[:, -1]
            weighted_sum = torch.einsum("bchw,bc->bhw", output, last_block)
            maps.append(weighted_sum / last_block.sum(dim=1)[:, None, None])
    return maps


def explain(model: nn.Module, pixel_values: torch.Tensor) -> Explanation:
    """All maps for one slice, (1, C, H, W), from one forward pass plus one cheap backward per class."""
    _check_eval(model)
    if pixel_values.shape[0] != 1:
        raise ValueError(f"explain takes one slice, got a batch of {pixel_values.shape[0]}")
    size = tuple(pixel_values.shape[-2:])
    with (
        gradients_stop_at(last_stage(model)) as feature_maps,
        recorded_outputs(stem_branches(model)) as branch_outputs,
        torch.enable_grad(),
    ):
        outputs = model(pixel_values, output_attentions=True, output_hidden_states=True)
    logits = outputs.logits
    cams = cams_from(logits, feature_maps, list(range(logits.shape[1])), size)[0]
    # the slice's own stem outputs come first; a mirror-averaging model records its mirror image's after them
    branch_outputs = branch_outputs[: len(stem_branches(model))]
    stage_weights = group_by_stage(outputs.attentions or (), se_blocks_per_stage(model))
    stage_maps = attention_weighted_maps(tuple(h.detach() for h in outputs.hidden_states[1:]), stage_weights)
    branch_maps = [output.abs().mean(dim=1)[0] for output in branch_outputs]
    return Explanation(
        probabilities=logits.detach().softmax(dim=-1)[0].cpu().numpy().astype(np.float32),
        # getattr: model folders saved before the detector existed carry remote code without this output
        unfamiliarity=None if (score := getattr(outputs, "unfamiliarity", None)) is None else float(score[0].detach()),
        grad_cams=normalise(cams),  # already at the input's size
        se_weights=[None if weights is None else weights[0].detach().cpu().numpy() for weights in stage_weights],
        stage_maps=[scale_maps(stage_map, size)[0] for stage_map in stage_maps],
        stem_maps=list(scale_maps(torch.stack(branch_maps), size)) if branch_maps else [],
    )
