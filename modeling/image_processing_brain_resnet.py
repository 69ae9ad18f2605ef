"""Image processor of the brain-tumor ResNet: any image -> grayscale, brain crop, intensity scaling, resize; and the
image-classification pipeline that hands it images as they are stored."""

import os

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import is_pil_image, to_numpy_array
from transformers.pipelines import ImageClassificationPipeline

# PIL modes that hold more than 8 bits per pixel: read as numbers, never through an 8-bit conversion that clips.
_HIGH_BIT_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_LUMA = (0.299, 0.587, 0.114)


def _pil_to_tensor(image) -> torch.Tensor:
    """A PIL image of any mode as a float (H, W) grayscale tensor in the image's own value range."""
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        return torch.from_numpy(to_numpy_array(image).astype("float32"))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = torch.from_numpy(to_numpy_array(image.convert("RGBA")).astype("float32"))
        return _to_gray(rgba.permute(2, 0, 1), opaque=255.0)
    return torch.from_numpy(to_numpy_array(image.convert("L")).astype("float32"))


def _to_gray(channels_first: torch.Tensor, opaque: float = 1.0) -> torch.Tensor:
    """(C, H, W) with C in 1-4 -> (H, W): colour becomes luma (ITU-R 601), and with an alpha channel (C 2 or 4,
    `opaque` its fully opaque value) transparent pixels become black, as MRI background is black."""
    colour, alpha = channels_first, None
    if channels_first.shape[0] in (2, 4):
        colour, alpha = channels_first[:-1], channels_first[-1]
    if colour.shape[0] == 1:
        gray = colour[0]
    else:
        weights = torch.tensor(_LUMA, dtype=colour.dtype, device=colour.device)
        gray = torch.einsum("chw,c->hw", colour, weights)
    return gray if alpha is None else gray * (alpha / opaque).clamp(0, 1)


def _array_to_tensor(array) -> torch.Tensor:
    """A numpy array or torch tensor, (H, W), (H, W, C) or (C, H, W), as a float (H, W) grayscale tensor."""
    tensor = array if isinstance(array, torch.Tensor) else torch.from_numpy(array.copy())
    tensor = tensor.detach().to("cpu")
    if tensor.dtype == torch.bool:
        tensor = tensor.to(torch.uint8)
    dtype, tensor = tensor.dtype, tensor.float()
    if tensor.ndim == 2:
        return tensor
    if tensor.ndim != 3:
        raise ValueError(f"expected an image of 2 or 3 dimensions, got shape {tuple(tensor.shape)}")
    if tensor.shape[-1] in (1, 2, 3, 4) and tensor.shape[0] not in (1, 2, 3, 4):
        tensor = tensor.permute(2, 0, 1)
    if tensor.shape[0] not in (1, 2, 3, 4):
        raise ValueError(f"cannot tell the channel axis of an image of shape {tuple(tensor.shape)}")
    return _to_gray(tensor, _opaque_value(dtype, tensor[-1]) if tensor.shape[0] in (2, 4) else 1.0)


def _opaque_value(dtype: torch.dtype, alpha: torch.Tensor) -> float:
    """An alpha channel's fully opaque value: 255 for 8 bits, 65535 for 16; for other types (an 8-bit image's
    array made float or int64), the first of 1, 255 and 65535 that its largest value does not exceed."""
    if dtype == torch.uint8:
        return 255.0
    if dtype == torch.uint16:
        return 65535.0
    top = float(alpha.max())
    return next((value for value in (1.0, 255.0, 65535.0) if top <= value), top)


def _flatten_images(images) -> list:
    """One image or a batch (list, tuple, 4-D array/tensor) -> a flat list of single images."""
    if is_pil_image(images):
        return [images]
    if isinstance(images, (list, tuple)):
        return [image for item in images for image in _flatten_images(item)]
    if hasattr(images, "ndim") and images.ndim == 4:
        return list(images)
    if hasattr(images, "ndim"):
        return [images]
    raise TypeError(f"unsupported image type {type(images).__name__}: give PIL images, numpy arrays or tensors")


# Pieces of foreground (foreground_min_piece_share) are found on a grid of at most this many cells a side, where
# cells up to _PIECES_REACH apart (Chebyshev distance) are one piece: burned-in text, scale bars and markers stay
# pieces of their own, apart from the head, while the head's own parts join.
_PIECES_GRID = 64
_PIECES_REACH = 5


def _labelled_pieces(cells: torch.Tensor) -> torch.Tensor:
    """Each True cell of a (h, w) grid labelled by the smallest flat index of its piece (inf elsewhere): labels
    spread by repeated min-pooling over (2 * _PIECES_REACH + 1)-wide windows until nothing changes."""
    height, width = cells.shape
    inside = cells.view(1, 1, height, width)
    inside_flat = cells.flatten()
    outside = torch.tensor(float("inf"))
    labels = torch.where(inside, torch.arange(height * width, dtype=torch.float32).view_as(inside), outside)
    window, reach = 2 * _PIECES_REACH + 1, _PIECES_REACH
    while True:
        # the window's minimum, row then column: on a CPU far quicker than one square window
        rows = F.max_pool2d(-labels, (1, window), 1, (0, reach))
        spread = torch.where(inside, -F.max_pool2d(rows, (window, 1), 1, (reach, 0)), outside).flatten()
        # Each cell then takes the label of the cell its label names, a cell of the same piece labelled no higher:
        # labels cross a piece in a few rounds instead of _PIECES_REACH cells a round (the same labels, found
        # 2.3 times quicker: few rounds of small operations matter where slices are decoded in threads).
        named = torch.where(inside_flat, spread, 0).long()
        jumped = torch.where(inside_flat, spread[named], outside).view_as(labels)
        if torch.equal(jumped, labels):
            return labels[0, 0]
        labels = jumped


def _main_pieces(mask: torch.Tensor, min_share: float) -> torch.Tensor:
    """The (H, W) mask without its pieces smaller than `min_share` of the largest one."""
    height, width = mask.shape
    cell = -(-max(height, width) // _PIECES_GRID)
    cells = F.max_pool2d(mask[None, None].float(), cell, cell, ceil_mode=True)[0, 0] > 0
    labels = _labelled_pieces(cells)
    pieces, sizes = torch.unique(labels[cells], return_counts=True)
    if len(pieces) < 2:
        return mask
    kept = torch.isin(labels, pieces[sizes >= min_share * sizes.max()])
    return mask & kept.repeat_interleave(cell, 0).repeat_interleave(cell, 1)[:height, :width]


def _quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile(values, q) of a 1-D tensor, to the bit, by selecting two order statistics instead of sorting
    (three times quicker on a slice's foreground)."""
    rank = torch.tensor(q, dtype=values.dtype) * (values.numel() - 1)
    below = int(rank.floor())
    low = values.kthvalue(below + 1).values
    if below + 1 == values.numel():
        return low
    return torch.lerp(low, values.kthvalue(below + 2).values, rank - below)


def _foreground_box(
    image: torch.Tensor, threshold: float, margin: float, min_piece_share: float = 0.0
) -> tuple[int, int, int, int]:
    """Bounding box (top, bottom, left, right) of the rows/columns that hold foreground, with a relative margin;
    with `min_piece_share`, of the foreground's pieces at least that share of the largest one's size."""
    mask = image > threshold
    if min_piece_share > 0:
        mask = _main_pieces(mask, min_piece_share)
    height, width = image.shape
    # A row/column counts only if 1% of it is foreground, so stray specks do not widen the box (text: the pieces).
    rows = torch.nonzero(mask.sum(dim=1) > 0.01 * width).flatten()
    cols = torch.nonzero(mask.sum(dim=0) > 0.01 * height).flatten()
    if len(rows) == 0 or len(cols) == 0:
        return 0, height, 0, width
    top, bottom, left, right = rows[0].item(), rows[-1].item() + 1, cols[0].item(), cols[-1].item() + 1
    pad = round(margin * max(bottom - top, right - left))
    return max(top - pad, 0), min(bottom + pad, height), max(left - pad, 0), min(right + pad, width)


def _pad_to_square(image: torch.Tensor) -> torch.Tensor:
    """Zero-pad (H, W) to a centred square, so that resizing never changes the aspect ratio of the anatomy."""
    height, width = image.shape
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    return F.pad(image, (left, side - width - left, top, side - height - top))


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(H, W) -> (height, width), bilinear with antialiasing when shrinking."""
    return F.interpolate(image[None, None], size=(height, width), mode="bilinear", antialias=True)[0, 0]


# A longer side than this is shrunk to it first: the model reads 128-224 px, and the square the crop is padded to
# would otherwise take side**2 memory (a 40 x 200,000 strip: 160 GB).
_MAX_SIDE = 2048


def _within_max_side(image: torch.Tensor) -> torch.Tensor:
    """(H, W) shrunk, keeping its aspect ratio, until neither side is longer than _MAX_SIDE."""
    height, width = image.shape
    if max(height, width) <= _MAX_SIDE:
        return image
    scale = _MAX_SIDE / max(height, width)
    return _resize(image, max(round(height * scale), 1), max(round(width * scale), 1))


def _nonfinite_as_background(image: torch.Tensor) -> torch.Tensor:
    """NaN and infinite pixels (the outside of a masked map, a corrupt value) as the lowest finite one."""
    finite = torch.isfinite(image)
    if finite.all():
        return image
    if not finite.any():
        raise ValueError("image has no finite pixel values")
    return torch.where(finite, image, image[finite].min())


# Fewer pixels than this share within `foreground_threshold` of the maximum: the maximum is a hot pixel or a marker
# far brighter than the slice (12-bit data in a 16-bit file, annotated at full scale), not the brain.
_MIN_BRIGHT_SHARE = 0.01
_OUTLIER_ROUNDS = 4


def _peak(image: torch.Tensor, threshold: float) -> torch.Tensor:
    """The brightest value of non-negative (H, W) that the brain, not a speck, reaches: the maximum, or the maximum
    left once the few pixels brighter than `threshold` of it are set aside, as often as needed."""
    peak = image.max()
    for _ in range(_OUTLIER_ROUNDS):
        bright = image > threshold * peak
        if bright.float().mean() >= _MIN_BRIGHT_SHARE or bright.all():
            break
        rest = image[~bright].max()
        if rest <= 0:
            break
        peak = rest
    return peak


class BrainResNetImageProcessor(BaseImageProcessor):
    r"""
    Turns MRI slices into `pixel_values` for [`BrainResNetForImageClassification`]. The same steps serve training,
    evaluation and the demo, and each removes a cue by which images of one source differ from another's rather than
    by anatomy:

    1. **Grayscale**: PIL images of any mode (L, RGB, RGBA, I;16, CMYK, P, ...), numpy arrays and torch tensors
       (`(H, W)`, `(H, W, C)` or `(C, H, W)`, single or batched) become one float channel; colour becomes luma,
       transparency becomes black, 16-bit data keeps its full range, NaN and infinite pixels (the outside of a
       masked map) become background, and an image over 2,048 px a side is first shrunk to that.
    2. **Intensity scaling** (`do_scale_intensity`): the `intensity_percentile` of the foreground maps to 1 and
       black to 0, so brightness, contrast and bit depth no longer tell scanners apart. The foreground is what is
       brighter than `foreground_threshold` of the maximum, unless under 1% of the pixels are: then that maximum
       is a speck (a marker at full scale above 12-bit data), set aside.
    3. **Brain crop** (`do_crop_foreground`): the image is cut to the bounding box of the pixels brighter than
       `foreground_threshold` (plus `crop_margin`), then zero-padded to a square, so framing and aspect ratio are the
       same for every source.
    4. **Resize** to `size` x `size` (bilinear, antialiased).
    5. **Normalise** (`do_normalize`): `(x - image_mean) / image_std`, and repeat to `num_channels`.

    Pieces of foreground smaller than `foreground_min_piece_share` of the largest (burned-in text, scale bars,
    orientation markers: a viewer's screenshot has them in its corners) count neither for the intensity scale nor
    for the crop, so that they neither darken the slice nor shrink the brain in the frame; 0 counts every piece, as
    releases before 2026-11-28 did.

    Steps 1-4 give values in [0, 1]; the trainer caches those and calls
    [`~BrainResNetImageProcessor.normalize_pixel_values`] itself after augmenting.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        size: int = 224,
        num_channels: int = 1,
        do_scale_intensity: bool = True,
        intensity_percentile: float = 99.5,
        do_crop_foreground: bool = True,
        foreground_threshold: float = 0.1,
        crop_margin: float = 0.04,
        foreground_min_piece_share: float = 0.1,
        do_normalize: bool = True,
        image_mean: float = 0.5,
        image_std: float = 0.5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.size = size
        self.num_channels = num_channels
        self.do_scale_intensity = do_scale_intensity
        self.intensity_percentile = intensity_percentile
        self.do_crop_foreground = do_crop_foreground
        self.foreground_threshold = foreground_threshold
        self.crop_margin = crop_margin
        self.foreground_min_piece_share = foreground_min_piece_share
        self.do_normalize = do_normalize
        self.image_mean = image_mean
        self.image_std = image_std

    def to_grayscale(self, image) -> torch.Tensor:
        """One image (PIL, numpy or torch) as a float (H, W) tensor in its own value range."""
        if is_pil_image(image):
            return _pil_to_tensor(image)
        if hasattr(image, "ndim"):
            return _array_to_tensor(image)
        raise TypeError(f"unsupported image type {type(image).__name__}")

    def scale_intensity(self, image: torch.Tensor) -> torch.Tensor:
        """Map black to 0 and the foreground's `intensity_percentile` to 1, clipping above."""
        image = image - image.min()
        peak = _peak(image, self.foreground_threshold)
        if peak <= 0:
            return image
        image = image / peak
        foreground_mask = image > self.foreground_threshold
        if self.foreground_min_piece_share > 0:  # burned-in text at full white would set the scale
            foreground_mask = _main_pieces(foreground_mask, self.foreground_min_piece_share)
        foreground = image[foreground_mask]
        if foreground.numel() == 0:
            return image
        if foreground.numel() > 1_000_000:  # a million pixels set the scale as well as all of them
            foreground = foreground[:: foreground.numel() // 1_000_000 + 1]
        return (image / _quantile(foreground, self.intensity_percentile / 100)).clamp_(0, 1)

    def crop_foreground(self, image: torch.Tensor) -> torch.Tensor:
        """Cut (H, W) in [0, 1] to the brain's bounding box and pad it to a square."""
        top, bottom, left, right = _foreground_box(
            image, self.foreground_threshold, self.crop_margin, self.foreground_min_piece_share
        )
        return _pad_to_square(image[top:bottom, left:right])

    def resize_square(self, image: torch.Tensor, size: int) -> torch.Tensor:
        """(H, W) -> (size, size), bilinear with antialiasing when shrinking."""
        return _resize(image, size, size).clamp_(0, 1)

    def normalize_pixel_values(self, pixel_values: torch.Tensor, num_channels: int | None = None) -> torch.Tensor:
        """(B, 1, H, W) in [0, 1], on any device -> normalised model input with `num_channels` channels."""
        num_channels = num_channels or self.num_channels
        pixel_values = (pixel_values - self.image_mean) / self.image_std
        return pixel_values.expand(-1, num_channels, -1, -1) if num_channels != 1 else pixel_values

    def preprocess_one(self, image, size: int | None = None) -> torch.Tensor:
        """Steps 1-4 for one image: a (size, size) float tensor in [0, 1]."""
        gray = self.to_grayscale(image)
        if gray.ndim != 2 or min(gray.shape) < 1:
            raise ValueError(f"image has no pixels (shape {tuple(gray.shape)})")
        gray = _within_max_side(_nonfinite_as_background(gray))
        if self.do_scale_intensity:
            gray = self.scale_intensity(gray)
        else:  # assume the common 8/16-bit ranges
            gray = gray / (65535.0 if gray.max() > 255 else 255.0 if gray.max() > 1 else 1.0)
        if self.do_crop_foreground:
            gray = self.crop_foreground(gray)
        return self.resize_square(gray, size or self.size)

    def preprocess(
        self,
        images,
        size: int | None = None,
        do_normalize: bool | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """
        Args:
            images: one image or a batch: PIL images (any mode), numpy arrays or torch tensors.
            size: output side in pixels (default `self.size`).
            do_normalize: apply mean/std and channel repeat (default `self.do_normalize`); without it the
                values are in [0, 1] with one channel.
            return_tensors: `"pt"` (the default; the model is PyTorch-only) or None.

        Returns:
            `BatchFeature` with `pixel_values` of shape `(batch, channels, size, size)`.
        """
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        batch = torch.stack([self.preprocess_one(image, size) for image in _flatten_images(images)])[:, None]
        if do_normalize:
            batch = self.normalize_pixel_values(batch)
        return BatchFeature(data={"pixel_values": batch}, tensor_type=return_tensors)


class BrainResNetImageClassificationPipeline(ImageClassificationPipeline):
    """`pipeline("image-classification", ...)` for this model (`config.custom_pipelines` names it): as transformers'
    own, except that an image file or PIL image reaches the processor in its own mode, turned upright by its EXIF
    orientation. transformers' `load_image` makes every image 8-bit RGB, which clips 16-bit slices and drops
    transparency, and the model then answers for a different picture."""

    def preprocess(self, image, timeout=None):
        if isinstance(image, (str, os.PathLike)) and os.path.isfile(image):
            with Image.open(image) as stored:
                image = ImageOps.exif_transpose(stored)
        elif is_pil_image(image):
            image = ImageOps.exif_transpose(image)
        else:  # URLs, base64 strings, arrays and tensors: transformers' way
            return super().preprocess(image, timeout=timeout)
        return self.image_processor(images=image, return_tensors="pt").to(self.dtype)
