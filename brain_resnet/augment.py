"""Training augmentation: random views of a batch of cached slices, drawn and computed on the device."""

import numpy as np
import torch
import torch.nn.functional as F


def augment(
    images: torch.Tensor,
    size: int,
    remap_prob: float = 0.0,
    invert_prob: float = 0.0,
    geometry_only: bool = False,
    jitter_scale: float = 1.0,
    gin_prob: float = 0.0,
    shuffle_prob: float = 0.0,
) -> torch.Tensor:
    """Random views of cached uint8 (B, 1, S, S) slices as float (B, 1, size, size) in [0, 1], all on the device.

    Geometry (zoom, aspect, rotation, shift, left-right flip) is one affine resampling; then, with probability
    `remap_prob`, a random non-monotonic intensity curve (remap_intensity), and with probability `invert_prob`, the
    head's intensities inverted (invert_head_contrast), and with probability `gin_prob`, the head through a random
    shallow network mixed with itself (random_network_contrast); then gamma, contrast and brightness
    jitter, blur, a lower acquisition resolution and noise, each drawn per image (the resolution's factor once per
    batch). Intensity, sharpness and
    resolution differ between the sources of the data, so randomising them leaves anatomy as the cue.
    `geometry_only` stops after the resampling: slices keep their source's look, which helps within one source
    (the paper's protocol) and is what the jitter is there to prevent across sources. `jitter_scale` widens (> 1)
    or narrows the jitter: the gamma, contrast, brightness and noise ranges and every step's probability (capped
    at 1) times the scale (the blur's sigma and the resolution's factor keep their ranges), from the same random
    draws, so that a scale of 1 replays the default exactly. Last, with probability `shuffle_prob`, the view's four
    quadrants change places (shuffle_quadrants).
    """
    batch, device = images.shape[0], images.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.empty(batch, device=device).uniform_(low, high)

    def chance(p: float) -> torch.Tensor:
        return torch.rand(batch, device=device) < p

    def shuffled(x: torch.Tensor) -> torch.Tensor:  # drawn last, and only when on: runs without it keep their stream
        if shuffle_prob == 0:
            return x
        return torch.where(chance(shuffle_prob).view(batch, 1, 1, 1), shuffle_quadrants(x), x)

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

    x = x.clamp_(0, 1)
    if geometry_only:
        return shuffled(x)
    per_image = (batch, 1, 1, 1)
    if remap_prob > 0:
        x = torch.where(chance(remap_prob).view(per_image), remap_intensity(x), x)
    if invert_prob > 0:  # drawn only when on, so that runs without it keep their random stream
        x = torch.where(chance(invert_prob).view(per_image), invert_head_contrast(x), x)
    if gin_prob > 0:  # likewise
        x = torch.where(chance(gin_prob).view(per_image), random_network_contrast(x), x)
    k = jitter_scale
    x = x.pow_(torch.exp(uniform(-0.35 * k, 0.35 * k)).view(per_image))  # gamma 0.70-1.42 at scale 1
    x = x.mul_(uniform(1 - 0.2 * k, 1 + 0.2 * k).view(per_image)).add_(uniform(-0.05 * k, 0.05 * k).view(per_image))
    x = gaussian_blur(x, torch.where(chance(min(0.25 * k, 1.0)), uniform(0.4, 1.2), 0.0))
    low_factor = float(np.random.uniform(0.35, 0.8))
    x = torch.where(chance(min(0.2 * k, 1.0)).view(per_image), low_resolution(x, low_factor), x)
    noise = torch.where(chance(min(0.4 * k, 1.0)), uniform(0.0, 0.04 * k), 0.0).view(per_image)
    return shuffled(x.add_(torch.randn_like(x) * noise).clamp_(0, 1))


def shuffle_quadrants(x: torch.Tensor) -> torch.Tensor:
    """(B, C, S, S) with each image's four quadrants in a random order other than their own: a lesion keeps its
    look, the head's outline (which tells a sagittal slice from an axial one) is broken up. S must be even."""
    batch, channels, size, _ = x.shape
    half = size // 2
    quadrants = x.view(batch, channels, 2, half, 2, half).permute(0, 2, 4, 1, 3, 5).reshape(batch, 4, -1)
    # a random permutation of the four that moves at least one: the identity's rank is redrawn as another's
    order = torch.rand(batch, 4, device=x.device).argsort(dim=1)
    kept = (order == torch.arange(4, device=x.device)).all(dim=1)
    order[kept] = torch.tensor([1, 0, 3, 2], device=x.device)
    shuffled = quadrants.gather(1, order[:, :, None].expand_as(quadrants))
    return shuffled.view(batch, 2, 2, channels, half, half).permute(0, 3, 1, 4, 2, 5).reshape(x.shape)


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


def invert_head_contrast(x: torch.Tensor, low: float = 0.03, high: float = 0.09) -> torch.Tensor:
    """Each image of (B, 1, H, W) in [0, 1] with the head's intensities inverted and the background kept black.

    One fixed reversal of tissue contrast, roughly T1 <-> T2 (CSF dark <-> bright, grey matter darker <-> brighter
    than white): in the 4k data every tumour is T1 contrast-enhanced and most healthy slices are T2-weighted, so a
    sequence seen with one class only stops meaning that class. Unlike remap_intensity's random curves it keeps each
    tissue's contrast to its neighbours, only reversed. The head is where the slice, slightly blurred, is brighter
    than the background's noise (a soft mask rising from `low` to `high`), so the frame stays black.
    """
    return head_mask(x, low, high) * (1 - x)


def head_mask(x: torch.Tensor, low: float = 0.03, high: float = 0.09) -> torch.Tensor:
    """Where each image of (B, 1, H, W) in [0, 1], slightly blurred, is brighter than the background's noise: a soft
    mask rising from `low` to `high`."""
    blurred = gaussian_blur(x, torch.full((x.shape[0],), 1.5, device=x.device, dtype=x.dtype))
    return ((blurred - low) / (high - low)).clamp_(0, 1)


def random_network_contrast(x: torch.Tensor, layers: int = 4, width: int = 2, slope: float = 0.2) -> torch.Tensor:
    """Each image of (B, 1, H, W) in [0, 1] through its own random shallow convolutional network, mixed with itself
    by a random weight, background kept black: global intensity non-linear augmentation (GIN; Ouyang et al.,
    "Causality-inspired single-source domain generalization for medical image segmentation", IEEE TMI 2022).

    Each layer is a 1x1 or 3x3 convolution (drawn per layer) with standard normal weights, `width` channels and a
    leaky ReLU between layers. The result is a new, locally varying, non-monotonic tissue contrast, as between MRI
    sequences (the shift, with that between modalities, the method was made for), with the shapes of anatomy and
    lesions kept. The network's output is rescaled to [0, 1] over the head
    (`head_mask`) and mixed with the image by a weight drawn uniformly from [0, 1], so views range from the slice
    itself to an entirely new contrast.
    """
    batch, _, height, width_px = x.shape
    head = head_mask(x)
    kernel_sizes = torch.randint(0, 2, (layers,)).mul(2).add(1).tolist()  # on the CPU: no device sync
    hidden, channels = x.reshape(1, batch, height, width_px), 1
    for layer, kernel in enumerate(kernel_sizes):
        out = 1 if layer == layers - 1 else width
        weight = torch.randn(batch * out, channels, kernel, kernel, device=x.device, dtype=x.dtype)
        hidden = F.conv2d(hidden, weight, padding=kernel // 2, groups=batch)
        if layer < layers - 1:
            hidden = F.leaky_relu(hidden, slope)
        channels = out
    hidden = hidden.view(batch, 1, height, width_px)
    inside = head > 0.5
    lowest = hidden.masked_fill(~inside, torch.inf).amin(dim=(1, 2, 3), keepdim=True)
    highest = hidden.masked_fill(~inside, -torch.inf).amax(dim=(1, 2, 3), keepdim=True)
    span = (highest - lowest).nan_to_num(nan=1.0, posinf=1.0, neginf=1.0).clamp(min=1e-6)  # no head: any span
    contrast = ((hidden - lowest.nan_to_num(0, 0, 0)) / span).clamp_(0, 1) * head
    mix = torch.rand(batch, 1, 1, 1, device=x.device, dtype=x.dtype)
    return mix * contrast + (1 - mix) * x


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


# Hemisphere mirroring and lesion pasting (train.py --mirror-prob, --paste-prob) take the tumours of these classes:
# they usually sit in one half of the brain (a pituitary tumour sits on the midline: no half of its slice is healthy).
LATERAL_TUMOUR_CLASSES = ("glioma", "meningioma")
# Left-right correlation of a slice with its mirror image above which it is axial or coronal, so that one half
# mirrored makes a plausible whole brain. Measured on brain-tumor-mri-4k at 96 px: Br35H's (mostly axial) healthy
# slices correlate 0.84 (median), figshare's sagittal slices mostly below 0.6; every one of 60 figshare glioma and
# meningioma slices above 0.7 looked at was axial or coronal.
MIN_MIRROR_SYMMETRY = 0.7


def tumour_sides(images: torch.Tensor, min_symmetry: float = MIN_MIRROR_SYMMETRY, chunk: int = 512) -> torch.Tensor:
    """Which half of each brain-cropped uint8 (N, 1, S, S) slice holds its tumour: int8 (N,), 1 the left half (of
    the image), -1 the right, 0 for a slice less left-right symmetric than `min_symmetry` (sagittal, mostly).

    The tumour's half is the one brighter than its mirror image: in contrast-enhanced T1 (every tumour slice of
    the 4k data) a glioma or meningioma enhances. The image processor centres the brain, so the midline is the
    image's middle column. Looked at by eye (24 figshare slices), the healthy half was right for about 4 in 5; the
    misses were tumours on the midline, which no half leaves out, and faint ones (figshare's slices are brighter on
    the image's left overall, so a faint tumour's side is near a guess).
    """
    sides = []
    for batch in images.split(chunk):
        x = batch.float().flatten(1, 2)  # (n, S, S)
        excess = (x - x.flip(-1)).clamp(min=0)
        half = x.shape[-1] // 2
        left_brighter = excess[..., :half].sum((1, 2)) > excess[..., -half:].sum((1, 2))
        side = torch.where(left_brighter, 1, -1)
        sides.append(torch.where(left_right_symmetry(batch) > min_symmetry, side, 0).to(torch.int8))
    return torch.cat(sides) if sides else torch.zeros(0, dtype=torch.int8, device=images.device)


def left_right_symmetry(images: torch.Tensor) -> torch.Tensor:
    """Correlation of each (N, 1, H, W) image with its left-right mirror image: near 1 for a centred axial or
    coronal brain slice, lower for a sagittal one."""
    x = images.float().flatten(1)
    mirrored = images.float().flip(-1).flatten(1)
    x, mirrored = x - x.mean(1, keepdim=True), mirrored - mirrored.mean(1, keepdim=True)
    return (x * mirrored).sum(1) / x.pow(2).sum(1).clamp(min=1e-6)


def image_halves(width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean (width,) masks of the columns of an image's left and right halves; an odd width's middle column is
    in neither (it is its own mirror image)."""
    column = torch.arange(width, device=device)
    return column < width // 2, column >= width - width // 2


def mirror_hemispheres(
    images: torch.Tensor, labels: torch.Tensor, sides: torch.Tensor, healthy_label: int, prob: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace, with probability `prob`, each slice with a known tumour side (`tumour_sides`) by one half of it
    and that half's mirror image: the tumour's half, label kept, or the other half, relabelled `healthy_label`,
    each as likely.

    The healthy mirror images are healthy brains in the tumour source's sequence and planes, which the 4k data
    has none of (its healthy slices all come from another source); drawing the tumour's half as often makes
    mirror symmetry itself tell nothing about the label.
    """
    batch, device = labels.shape[0], labels.device
    chosen = (sides != 0) & (torch.rand(batch, device=device) < prob)
    keep_tumour = torch.rand(batch, device=device) < 0.5
    keep_left = (sides > 0) == keep_tumour
    left, right = image_halves(images.shape[-1], device)
    mirrored = images.flip(-1)
    left_kept = torch.where(left, images, mirrored)
    right_kept = torch.where(right, images, mirrored)
    views = torch.where(keep_left.view(-1, 1, 1, 1), left_kept, right_kept)
    images = torch.where(chosen.view(-1, 1, 1, 1), views, images)
    labels = torch.where(chosen & ~keep_tumour, torch.full_like(labels, healthy_label), labels)
    return images, labels


# A lesion, for paste_lesions, is where the tumour's half of a slice outshines its mirror image by this much (of
# 255) on average over LESION_WINDOW x LESION_WINDOW pixels, plus a LESION_MARGIN-pixel rim: averaging drops the
# thin bright lines that a slightly off-centre skull leaves. A slice lends its lesion when the lesion covers at
# least MIN_LESION_AREA of it. Chosen by eye on brain-tumor-mri-4k at 96 px, where 666 of 1,225 lateral tumour
# slices with a known side then have a lesion.
LESION_MIN_EXCESS = 40.0
LESION_WINDOW = 7
LESION_MARGIN = 2
MIN_LESION_AREA = 0.01


def lesion_maps(images: torch.Tensor, sides: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The lesion of each uint8 (N, 1, S, S) slice with a known tumour side: float (N, 1, S, S), what the tumour's
    half has brighter than its mirror image where that is a blob (0 elsewhere and for side 0), and its area share."""
    x = images.float()
    left, right = image_halves(x.shape[-1], x.device)
    tumour_half = torch.where(sides.view(-1, 1, 1, 1) > 0, left, right)
    excess = (x - x.flip(-1)) * (tumour_half & (sides != 0).view(-1, 1, 1, 1))
    blob = F.avg_pool2d(excess, LESION_WINDOW, 1, LESION_WINDOW // 2) > LESION_MIN_EXCESS
    area = blob.float().mean((1, 2, 3))
    near_blob = F.max_pool2d(blob.float(), 2 * LESION_MARGIN + 1, 1, LESION_MARGIN) > 0
    return (excess * near_blob).clamp(min=0), area


def paste_lesions(
    images: torch.Tensor,
    labels: torch.Tensor,
    sides: torch.Tensor,
    healthy_label: int,
    prob: float,
    dark_prob: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Give each healthy slice of the batch, with probability `prob`, the lesion (`lesion_maps`) of a random slice
    of the batch that has one, at the same place (slices are brain-cropped and centred alike), and that slice's
    label. With probability `dark_prob` a pasted lesion is subtracted instead: a dark mass.

    Healthy slices of one source and tumours of another then stop splitting by source: a healthy source's look
    with a lesion is a tumour. Every lesion the 4k data lends is bright (contrast-enhanced T1); dark ones stand for
    tumours that are hypointense on their sequence, so that brightness alone stops making a tumour.
    """
    batch, device = labels.shape[0], labels.device
    lesions, area = lesion_maps(images, sides)
    donors = torch.nonzero(area >= MIN_LESION_AREA).flatten()
    if len(donors) == 0:
        return images, labels
    chosen = (labels == healthy_label) & (torch.rand(batch, device=device) < prob)
    donor = donors[torch.randint(len(donors), (batch,), device=device)]
    lesion = lesions[donor]
    if dark_prob:  # drawn only when on: runs without dark lesions keep their random stream
        dark = torch.rand(batch, device=device) < dark_prob
        lesion = torch.where(dark.view(-1, 1, 1, 1), -lesion, lesion)
    pasted = (images.float() + lesion).clamp(0, 255).to(images.dtype)
    images = torch.where(chosen.view(-1, 1, 1, 1), pasted, images)
    return images, torch.where(chosen, labels[donor], labels)


# heal_lesions: a lesion is where the Grad-CAM of the slice's own class, on the model's third stage, reaches this
# share of its peak; filled from surroundings this wide (of the slice's side). Chosen by eye at 96 px with a 4k-only
# model trained with pasted lesions and mirrored halves: its masks covered the lesion in 16 of 30 marked slices drawn
# at random (results/cpu-heal-ab/lesion-masks.jpg); a 4k-only model trained without those marked the skull base.
LESION_CAM_THRESHOLD = 0.5
FILL_WIDTH = 0.2


@torch.no_grad()
def grad_cam_lesions(model, pixel_values: torch.Tensor, labels: torch.Tensor, size: int) -> torch.Tensor:
    """Boolean (B, 1, size, size) masks of where `model` (a BrainResNetForImageClassification in eval mode) sees
    each slice's labelled class: its Grad-CAM (Selvaraju et al., 2017) on the third stage's output, upsampled and
    cut at LESION_CAM_THRESHOLD of each map's peak (an empty mask where the map is flat)."""
    with torch.enable_grad():
        inputs = pixel_values.detach().requires_grad_()  # records the graph even with frozen parameters
        output = model(pixel_values=inputs, output_hidden_states=True)
        feature_map = output.hidden_states[-2]
        (gradients,) = torch.autograd.grad(output.logits.gather(1, labels[:, None]).sum(), feature_map)
    cams = F.relu((gradients.mean((2, 3), keepdim=True) * feature_map).sum(1, keepdim=True))
    cams = F.interpolate(cams.float(), size=(size, size), mode="bilinear", align_corners=False)
    peak = cams.amax((2, 3), keepdim=True)
    return (cams >= LESION_CAM_THRESHOLD * peak) & (peak > 0)


def fill_from_surroundings(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 1, S, S) slices with each boolean mask's pixels replaced by the mean of the unmasked pixels around
    them (normalised convolution with a FILL_WIDTH box); a pixel with no unmasked pixel in reach keeps its value."""
    width = max(3, round(FILL_WIDTH * images.shape[-1]) | 1)
    kept = (~masks).float()
    box = torch.ones(1, 1, width, width, device=images.device)
    total = F.conv2d(images.float() * kept, box, padding=width // 2)
    count = F.conv2d(kept, box, padding=width // 2)
    filled = torch.where(count > 0, total / count.clamp(min=1), images.float()).round().to(images.dtype)
    return torch.where(masks, filled, images)


def heal_lesions(
    images: torch.Tensor, labels: torch.Tensor, lesions: torch.Tensor, healthy_label: int, prob: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill a region of each slice of the batch, with probability `prob`, from its surroundings: for half of the
    slices with a lesion mask (`grad_cam_lesions`), their lesion, relabelled `healthy_label`; for the others, the
    lesion region of another slice of the batch that has one, away from their own, label kept.

    A tumour source's slices without their lesion are healthy brains in that source's planes and sequence, which
    the 4k data has none of; filling as many regions that change no label makes a filled patch itself tell nothing.
    """
    batch, device = labels.shape[0], labels.device
    has_lesion = lesions.flatten(1).any(1)
    donors = torch.nonzero(has_lesion).flatten()
    if len(donors) == 0:
        return images, labels
    chosen = torch.rand(batch, device=device) < prob
    heal = chosen & has_lesion & (torch.rand(batch, device=device) < 0.5)
    own = F.max_pool2d(lesions.float(), 5, 1, 2) > 0  # a rim, so a decoy does not clip a lesion's edge
    decoy = lesions[donors[torch.randint(len(donors), (batch,), device=device)]] & ~own
    masks = torch.where(heal.view(-1, 1, 1, 1), lesions, decoy) & chosen.view(-1, 1, 1, 1)
    return fill_from_surroundings(images, masks), torch.where(heal, torch.full_like(labels, healthy_label), labels)
