"""Gradio Space: classify a brain MRI slice with the improved ResNet34 and show what the network looked at.

    python space/app.py

Environment: MODEL_ID (a Hub repo id or a local folder; default the bundled release/), and GRADIO_SERVER_NAME /
GRADIO_SERVER_PORT, which Gradio reads itself (default 127.0.0.1:7860).
"""

import hashlib
import io
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
import pydicom
import torch
from explain import explain
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
from transformers import AutoImageProcessor, AutoModelForImageClassification

SPACE_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL_ID = str(SPACE_DIR.parent / "release")
EXAMPLES = (  # (class, file in space/examples/): real slices of the training data's sources
    ("glioma", "figshare-0209.jpg"),
    ("glioma", "figshare-2650.jpg"),
    ("meningioma", "figshare-0671.jpg"),
    ("meningioma", "figshare-0403.jpg"),
    ("notumor", "br35h-no-0004.jpg"),
    ("notumor", "br35h-no-1477.jpg"),
    ("pituitary", "figshare-0937.jpg"),
    ("pituitary", "figshare-1576.jpg"),
)

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # a 16-bit 2048x2048 TIFF or an uncompressed DICOM slice fits easily
MAX_PIXELS = 25_000_000  # 5000x5000; anything larger is no MRI slice and could be a decompression bomb
# Mean spread between a pixel's R, G and B (8-bit units) above which an upload is a colour picture, not an MRI
# slice: the training data's slices saved as RGB, colour annotations included, stay under 6.
COLOUR_SPREAD = 20
COLOUR_NOTE = (
    "This image is in colour, but MRI slices are grayscale: is it a photo or a colour-coded map? The model reads "
    "it as a grayscale slice anyway, and its answer means little for anything but an MRI slice."
)
UNFAMILIAR_NOTE = (
    "This slice is unlike the slices the model was trained on (its features lie far from all of them): another "
    "sequence, plane, scanner or body part, or no MRI at all. Treat its answer as unreliable."
)
NOTE_TITLES = {COLOUR_NOTE: "Not an MRI slice?", UNFAMILIAR_NOTE: "Unfamiliar image"}
MIN_SIDE = 32  # below this there is no anatomy left to classify
PIL_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")  # only these decoders ever see an upload
SUPPORTED = "a JPEG, PNG, WebP, BMP or TIFF image (8- or 16-bit, grayscale or colour) or a DICOM file (.dcm)"
# The pixel limit is enforced below with a clear message; PIL's own warning for it would only add log noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

PREDICTED = "predicted class"
HEAT_COLOURS = (colormaps["turbo"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
SE_COLOURS = (colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
OVERLAY_OPACITY = 0.6  # at the hottest point; cold regions leave the slice visible

INTRO = """
# Brain tumor MRI classifier: improved ResNet34

Upload one axial brain MRI slice (drag and drop, browse, or paste with Ctrl+V): the network
([arXiv 2512.03751](https://arxiv.org/abs/2512.03751): ResNet34 with a multi-scale input stem, Inception-v2
downsampling and Squeeze-and-Excitation attention) gives the probability of glioma, meningioma, pituitary tumor or no
tumor, and shows what it looked at.

**Research demo, not a medical device.** It must not be used for diagnosis or any clinical decision.
"""

HOW_TO_READ = """
### How to read the maps

All maps lie over the **model's view**: the slice as the network saw it (grayscale, cropped to the brain, at the
model's input size: 224×224 by default, 128×128 for the bundled release).

- **Grad-CAM** (Selvaraju et al., 2017): where the last stage's features raised the score of the chosen class
  (gradient-weighted sum of its feature maps, 1/32 of the input side, upsampled: coarse for a small input; for a
  model that also reads the slice's mirror image, as the bundled release does, that view's share flipped back). Each
  class's map is scaled to its own maximum, so a bright map for an unlikely class is still weak evidence; pick the
  class with the control under the image. An empty map (no colour) means that no region raised that class's
  score.
- **SE channel weights**: the Squeeze-and-Excitation gate (0 to 1) that each residual block applied to each of its
  channels for this slice; one row per block, one panel per stage.
- **Attention-weighted activation**: each stage's output feature map averaged over channels with the weights of
  its last SE block, i.e. where the channels that attention turned up respond (1/4 of the input side in stage 1
  down to 1/32).
- **Stem branch responses**: mean absolute response of the multi-scale stem's parallel 3×3, 5×5 and 7×7
  convolutions, showing the structures each receptive field picks up.

Colours run from dark blue (low) through green and yellow to dark red (high), each map scaled to its own maximum;
the SE plot has its own scale. Maps show what the network used, not where a tumor is: a model can rely on cues that
have nothing to do with one.

### How far to trust the answer

For a calibrated release, the probabilities are calibrated on slices it never trained on (temperature scaling): of
the slices given 0.9, about nine in ten are right, *for slices like its training data*. **Unfamiliarity** measures
how unlike those slices an upload is (the distance of its features from every class of the training slices, over a
threshold that 5% of held-out slices exceed); above 1, the page warns that the slice is unfamiliar. The check
catches other sequences, planes, scanners and non-MRI pictures that land far from the training data; it cannot
catch an unfamiliar slice that happens to look familiar to the network, and a familiar slice can still be
misclassified. Checked with models like this one on a collection they never trained on, the warning flagged most
of their wrong tumor types and of the healthy brains they called a tumor, but almost none of the tumors they
missed: **"no tumor" without a warning is no all-clear.**

**Where it errs most.** In the paper's data every sagittal, coronal and T1 contrast-enhanced slice is a tumor and the
healthy slices are axial, many T2-weighted or FLAIR; networks trained on it read the plane and the sequence. The
release also learned from a collection with both classes in several planes and sequences, which helps, but treat
"no tumor" on an axial T2-weighted slice, and a tumor on a healthy sagittal or coronal slice, with the most doubt.
"""

CSS = """
#model-status.untrained { background: #b91c1c; color: white; padding: 0.75rem 1rem; border-radius: 0.5rem; }
#model-status.untrained * { color: white; }
/* the map at the panel's width, not at its own 128 or 224 px */
#grad-cam .image-frame { width: 100%; }
#grad-cam img { width: 100%; height: auto; object-fit: contain; }
/* Gradio reserves 450 px for a gallery of height "auto"; these hold one row of maps and need only its height */
#stage-maps .grid-wrap, #stem-maps .grid-wrap { min-height: 0; }
/* on a phone, two stage maps a row rather than four cut off at the screen's edge */
@media (max-width: 640px) { #stage-maps .grid-container { --grid-cols: 2 !important; } }
"""

# Each analysis starts by closing the messages the previous one popped up (a failed upload's error stays until then).
CLOSE_MESSAGES = """(file) => {
    document.querySelectorAll('[data-testid="toast-close"]').forEach((button) => button.click());
    return file;
}"""
NOT_ANALYSED = (
    "**This file could not be analysed**: the message at the top right of the page says why. Upload another slice."
)

# gr.File has no paste of its own: hand a pasted file to its file input as if it had been dropped there (after
# clearing the previous file, whose preview replaces the input). In <head>, so it listens before the app renders.
PASTE_SCRIPT = """
<script>
document.addEventListener("paste", async (event) => {
  const file = event.clipboardData?.files?.[0];
  if (!file) return;
  event.preventDefault();
  const fileInput = () => document.querySelector("#slice-upload input[type=file]");
  if (!fileInput()) {
    document.querySelector('#slice-upload button[aria-label="Clear"]')?.click();
    for (let wait = 0; !fileInput() && wait < 50; wait++) await new Promise((done) => setTimeout(done, 20));
  }
  const input = fileInput();
  if (!input) return;
  const transfer = new DataTransfer();
  transfer.items.add(file);
  input.files = transfer.files;
  input.dispatchEvent(new Event("change", { bubbles: true }));
});
</script>
"""


class UnusableUpload(ValueError):
    """An upload the Space cannot analyse; the message says why and what to upload instead."""


def check_dimensions(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise UnusableUpload(
            f"The image is too large: {width}×{height} pixels ({width * height / 1e6:.0f} megapixels; the limit is "
            f"{MAX_PIXELS / 1e6:.0f}, which also guards against decompression bombs). Downscale the slice."
        )
    if min(width, height) < MIN_SIDE:
        raise UnusableUpload(
            f"The image is only {width}×{height} pixels; a slice needs at least {MIN_SIDE}×{MIN_SIDE}."
        )


def is_dicom(path: Path) -> bool:
    with path.open("rb") as file:
        preamble = file.read(132)
    return preamble[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom")


def read_dicom(path: Path) -> np.ndarray:
    """One DICOM slice as float pixel values after the stored rescale and window/level, bright = high signal."""
    try:
        dataset = pydicom.dcmread(path)
    except InvalidDicomError:
        raise UnusableUpload(
            "This file is named like DICOM but is not a DICOM file (it has no DICOM header): upload the slice's "
            f"DICOM file, or {SUPPORTED}."
        ) from None
    if not any(tag in dataset for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        meta = getattr(dataset, "file_meta", {})
        sop_class = dataset.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID")
        if "Rows" in dataset or "Image Storage" in getattr(sop_class, "name", ""):  # an image, cut off
            raise UnusableUpload("This DICOM file ends before its pixel data: it is truncated. Upload it again.")
        raise UnusableUpload(
            "This DICOM file holds no pixel data (it is a report, a structured document or similar): "
            "upload a DICOM image of one slice."
        )
    check_dimensions(int(dataset.get("Columns", 0)), int(dataset.get("Rows", 0)))
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise UnusableUpload(f"This DICOM file holds {frames} frames; upload a single slice.")
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # pydicom's decoders raise many types for unsupported or broken pixel data
        syntax = dataset.file_meta.get("TransferSyntaxUID", "unknown transfer syntax")
        raise UnusableUpload(
            f"The DICOM pixel data cannot be decoded ({getattr(syntax, 'name', syntax)}: {error}). "
            "Export the slice uncompressed or as PNG."
        ) from None
    if pixels.ndim == 3:  # colour (RGB) DICOM: no window to apply
        return pixels
    if dataset.get("PhotometricInterpretation") == "PALETTE COLOR":  # indices into a colour table, not intensities
        return apply_color_lut(pixels, dataset)
    pixels = apply_voi_lut(apply_modality_lut(pixels, dataset), dataset).astype(np.float32)
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":  # stored with high values dark
        pixels = pixels.max() + pixels.min() - pixels
    return pixels


def read_image(path: Path) -> Image.Image:
    try:
        with Image.open(path, formats=PIL_FORMATS) as image:
            check_dimensions(*image.size)
            # A JPEG with an embedded preview or a second view (MPO) shows its first image, as any viewer does.
            frames = 1 if image.format == "MPO" else getattr(image, "n_frames", 1)
            if frames > 1:
                raise UnusableUpload(
                    f"The file holds {frames} frames (an animation or a multi-page image); upload a single still slice."
                )
            try:
                image.load()
            except OSError as error:
                raise UnusableUpload(f"The image file is truncated or corrupt ({error}).") from None
            return ImageOps.exif_transpose(image)
    except UnidentifiedImageError:
        raise UnusableUpload(f"This file is not an image the Space can read: upload {SUPPORTED}.") from None
    except Image.DecompressionBombError:
        raise UnusableUpload(
            f"The image has far more than {MAX_PIXELS / 1e6:.0f} megapixels (a possible decompression bomb); "
            "downscale the slice."
        ) from None


def load_slice(path: str | Path) -> Image.Image | np.ndarray:
    """Decode an upload (image or DICOM), or raise UnusableUpload with a message for the user."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise UnusableUpload("The file is empty (0 bytes).")
    try:
        return read_dicom(path) if is_dicom(path) else read_image(path)
    except UnusableUpload:
        raise
    except Exception as error:  # decoders raise many types for malformed files (SyntaxError, struct.error, ...)
        raise UnusableUpload(
            f"The file could not be decoded ({type(error).__name__}: {error}); upload {SUPPORTED}."
        ) from None


def colour_note(image: Image.Image | np.ndarray) -> str | None:
    """COLOUR_NOTE for colour pictures (photos, colour-coded maps), None for grayscale slices in any format."""
    if isinstance(image, Image.Image):
        if image.mode in ("1", "L", "LA", "F") or image.mode.startswith("I"):  # palettes (P, PA) may hold colour
            return None
        small = image.copy()
        small.thumbnail((256, 256))
        rgb = np.asarray(small.convert("RGB"), dtype=np.float32)
    elif image.ndim == 3 and image.shape[-1] >= 3:  # a colour DICOM
        rgb = image[..., :3].astype(np.float32)
        rgb = (rgb - rgb.min()) * 255 / max(float(np.ptp(rgb)), 1e-6)
    else:
        return None
    return COLOUR_NOTE if (rgb.max(axis=2) - rgb.min(axis=2)).mean() > COLOUR_SPREAD else None


def load_model(model_id: str):
    """The model and image processor, through the Auto classes, set up for CPU inference."""
    torch.set_flush_denormal(True)  # denormal floats in trained weights would slow CPU maths many times over
    model = AutoModelForImageClassification.from_pretrained(model_id, trust_remote_code=True)
    processor = AutoImageProcessor.from_pretrained(model_id, trust_remote_code=True)
    # Inference only: frozen parameters let Grad-CAM record gradients from the last stage on, nothing before it;
    # channels-last layout makes the CPU (oneDNN) convolutions about a quarter faster.
    model.eval().requires_grad_(False).to(memory_format=torch.channels_last)
    return model, processor


def model_status(config) -> str:
    """Markdown saying whether the weights are trained, how well they score and how the answers are made honest;
    untrained weights get a plain warning."""
    info = getattr(config, "training_info", None)
    if not info:
        return (
            "⚠️ **UNTRAINED MODEL: the weights are random.** Its predictions and maps are meaningless; "
            "they only show that the pipeline runs (the model's config holds no training_info)."
        )
    honesty = []
    if (temperature := getattr(config, "calibration_temperature", 1.0)) != 1.0:
        honesty.append(f"probabilities calibrated on held-out slices (temperature {temperature:.2f})")
    if point := info.get("operating_point"):
        honesty.append(
            f"the tumor threshold is set so that at most {point['healthy_false_alarms']:.0%} of held-out healthy "
            "slices are called a tumor"
        )
    if getattr(config, "familiarity_threshold", None) is not None:
        honesty.append("slices unlike the training data are flagged as unfamiliar")
    if getattr(config, "mirror_average", False):
        honesty.append("a slice and its mirror image get one answer")
    headline = ""
    if (out_of_sample := info.get("accuracy_cross_fitted")) is not None:
        # make_release.py's figure, scored on held-out slices that its threshold and calibration were not fitted on
        fitted = "tumor threshold and calibration" if info.get("operating_point") else "calibration"
        interval = info.get("accuracy_cross_fitted_interval")
        # near-duplicate slices of one patient count as one case: fewer cases than slices, a wider interval
        spread = (
            f"95% interval {interval[0]:.1%}–{interval[1]:.1%}, one patient's similar slices counted once; "
            if interval
            else ""
        )
        headline = (
            f"**{out_of_sample:.1%} of held-out slices of its training sources classified correctly** ({spread}its "
            f"{fitted} fitted on other held-out slices; slices from other scanners may fare worse). "
        )
        if recipe := info.get("recipe_cross_validation"):  # the bundled model's fold is one draw of several
            low, high = recipe["interval"]
            headline += (
                f"The same recipe over all {recipe['folds']} folds (trained on {recipe['device']}): "
                f"**{recipe['accuracy']:.1%}** ({low:.1%}–{high:.1%}), the steadier figure. "
            )
    return f"{headline}Model: trained." + (f" {'; '.join(honesty).capitalize()}." if honesty else "")


def training_details(config) -> str:
    """Markdown list of the config's training_info, one setting or score a line, for the page's "Training details"
    (empty for untrained weights)."""
    info = getattr(config, "training_info", None) or {}
    # with a headline figure (model_status), the in-sample accuracies would only put three numbers side by side
    headline = info.get("accuracy_cross_fitted") is not None
    return "\n".join(
        f"- {key}: {value:.4g}" if isinstance(value, float) else f"- {key}: {value}"
        for key, value in info.items()
        if isinstance(value, (str, int, float)) and not (headline and key.startswith("accuracy"))
    )


def to_uint8(values: np.ndarray) -> np.ndarray:
    return np.round(np.clip(values, 0, 1) * 255).astype(np.uint8)


def heat_overlay(view: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The model's view (uint8 gray) with the heat map's colours over it, more opaque where the map is hotter."""
    opacity = heat[..., None].astype(np.float32) * (OVERLAY_OPACITY / 255)
    blended = (1 - opacity) * view[..., None] + opacity * HEAT_COLOURS[heat]
    return np.round(blended).astype(np.uint8)


def se_weights_plot(se_weights: list[np.ndarray | None]) -> np.ndarray | None:
    """
    One labelled heat strip per stage (a row per SE block, a column per channel, colour = gate from 0 to 1) and a
    colour scale, as an RGB image; None for a model without SE. Drawn with PIL: matplotlib would take ~200 ms.
    """
    stages = [(number, weights) for number, weights in enumerate(se_weights, start=1) if weights is not None]
    if not stages:
        return None
    font = ImageFont.load_default(size=16)
    margin, line, row_height, width = 8, 22, 10, 480
    strip_width = width - 2 * margin
    blocks_height = sum(line + len(weights) * row_height + margin for _, weights in stages)
    height = margin + 2 * line + 8 + blocks_height + 10 + line + margin  # titles, stages, colour scale, its labels
    plot = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(plot)
    draw.text((margin, margin), "SE channel weights per stage", fill="black", font=ImageFont.load_default(size=18))
    draw.text((margin, margin + line), "a row per block, a column per channel", fill="black", font=font)
    top = margin + 2 * line + 8  # under the title, and clear of the buttons Gradio puts in the image's corner
    for number, weights in stages:
        blocks, channels = weights.shape
        draw.text((margin, top), f"stage {number}: {channels} channels x {blocks} blocks", fill="black", font=font)
        top += line
        strip = Image.fromarray(SE_COLOURS[to_uint8(weights)]).resize(
            (strip_width, blocks * row_height), Image.Resampling.NEAREST
        )
        plot.paste(strip, (margin, top))
        top += blocks * row_height + margin
    scale = SE_COLOURS[np.linspace(0, 255, strip_width).astype(np.uint8)][None].repeat(10, axis=0)
    plot.paste(Image.fromarray(scale), (margin, top))
    top += 10
    draw.text((margin, top), "0", fill="black", font=font)
    draw.text((width // 2, top), "SE weight", fill="black", font=font, anchor="ma")
    draw.text((width - margin, top), "1", fill="black", font=font, anchor="ra")
    return np.asarray(plot)


class PngStore:
    """
    Rendered maps as PNG files named by their content, each written once and atomically. Gradio copies returned
    files into its cache race-free, but rewrites the arrays it encodes itself on every request: a client still
    downloading a map of an identical earlier request (two visitors on one example) could get a truncated file.
    """

    def __init__(self, max_age_s: float = 600):
        self.folder = Path(tempfile.mkdtemp(prefix="brain-space-maps-"))
        self.max_age_s = max_age_s  # Gradio has its own copy moments after a map is returned

    def save(self, rgb: np.ndarray) -> str:
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="PNG", compress_level=1)  # 3x faster than the default, ~1% larger
        data = buffer.getvalue()
        path = self.folder / f"{hashlib.sha256(data).hexdigest()}.png"
        try:
            os.utime(path)  # there already: keep it from the next prune while Gradio copies it
        except FileNotFoundError:  # new, or pruned a moment ago
            staging = path.with_suffix(f".{os.getpid()}-{time.monotonic_ns()}.part")
            staging.write_bytes(data)
            staging.replace(path)
        return str(path)

    def prune(self) -> None:
        """Delete the maps not saved for max_age_s; a save may run meanwhile (the Grad-CAM class control's)."""
        cutoff = time.time() - self.max_age_s
        for path in self.folder.glob("*.png"):  # not another save's staging file, about to become a map
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)
            except FileNotFoundError:  # pruned by another request meanwhile
                continue


@dataclass
class GradCams:
    """The model's view and every class's Grad-CAM, as uint8: all it takes to redraw the overlay for any class."""

    view: np.ndarray
    maps: np.ndarray
    predicted: int

    def overlay(self, class_index: int | None = None) -> np.ndarray:
        return heat_overlay(self.view, self.maps[self.predicted if class_index is None else class_index])


@dataclass
class Analysis:
    """What the page shows for one slice: probabilities and RGB maps with their captions."""

    probabilities: dict[str, float]
    unfamiliarity: float | None  # above 1: unlike the training data; None when the model has no detector
    grad_cams: GradCams
    se_plot: np.ndarray | None
    stage_maps: list[tuple[np.ndarray, str]]
    stem_maps: list[tuple[np.ndarray, str]]
    notes: list[str] = field(default_factory=list)  # warnings about the upload, shown beside the answer


class SliceAnalyser:
    """Decodes an upload, runs the model once and renders every map."""

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor
        self.labels = [model.config.id2label[index] for index in range(model.config.num_labels)]

    def model_input(self, image) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's view (H, W) in [0, 1] and the normalised (1, C, H, W) input made from it."""
        view = self.processor.preprocess_one(image)
        pixel_values = self.processor.normalize_pixel_values(view[None, None], self.model.config.num_channels)
        return view, pixel_values.contiguous(memory_format=torch.channels_last)

    def analyse(self, path: str | Path) -> Analysis:
        image = load_slice(path)
        try:
            view, pixel_values = self.model_input(image)
        except (ValueError, TypeError, RuntimeError) as error:
            raise UnusableUpload(f"The image could not be converted for the model ({error}).") from None
        explanation = explain(self.model, pixel_values)
        view = to_uint8(view.numpy())
        config = self.model.config
        stage_captions = [
            f"stage {number} · {channels} ch" + (" · no SE: mean" if weights is None else "")
            for number, channels, weights in zip(
                range(1, len(config.hidden_sizes) + 1), config.hidden_sizes, explanation.se_weights, strict=True
            )
        ]
        notes = [note] if (note := colour_note(image)) else []
        if explanation.unfamiliarity is not None and explanation.unfamiliarity > 1:
            notes.append(UNFAMILIAR_NOTE)
        stem_captions = [
            f"{size}×{size} · {channels} ch"
            for size, channels in zip(config.stem_kernel_sizes, config.stem_branch_channels, strict=True)
        ]
        return Analysis(
            probabilities=dict(zip(self.labels, explanation.probabilities.tolist(), strict=True)),
            unfamiliarity=explanation.unfamiliarity,
            grad_cams=GradCams(view, to_uint8(explanation.grad_cams), int(explanation.probabilities.argmax())),
            se_plot=se_weights_plot(explanation.se_weights),
            stage_maps=[
                (heat_overlay(view, to_uint8(stage_map)), caption)
                for stage_map, caption in zip(explanation.stage_maps, stage_captions, strict=True)
            ],
            stem_maps=[
                (HEAT_COLOURS[to_uint8(stem_map)], caption)
                for stem_map, caption in zip(explanation.stem_maps, stem_captions, strict=False)
            ],  # a single-conv stem has no branch maps
            notes=notes,
        )

    def warm_up(self) -> None:
        """One pass on a blank slice, so that the first visitor does not pay for oneDNN's kernel set-up."""
        explain(self.model, self.model_input(Image.new("L", (256, 256)))[1])


def assessment(analysis: Analysis) -> dict:
    """How far to trust the answer, for people and API clients alike."""
    return {
        "unfamiliar": None if analysis.unfamiliarity is None else analysis.unfamiliarity > 1,
        "unfamiliarity": None if analysis.unfamiliarity is None else round(analysis.unfamiliarity, 4),
        "warnings": analysis.notes,
    }


def verdict(trust: dict | None) -> str:
    """The assessment in words, shown beside the probabilities (the API returns the assessment itself)."""
    if not trust:
        return ""
    lines = []
    for note in trust["warnings"]:
        title = NOTE_TITLES[note]
        lines.append(f"⚠️ **{title if title.endswith('?') else title + '.'}** {note}")
    if trust["unfamiliar"] is None:
        lines.append("This model has no unfamiliar-image check: nothing says how far the answer can be trusted.")
    elif not trust["unfamiliar"]:
        lines.append(
            f"**Familiar image**: unfamiliarity {trust['unfamiliarity']:.2f} (above 1 would be unfamiliar). A familiar "
            'slice can still be misclassified, and "no tumor" without a warning is no all-clear.'
        )
    return "\n\n".join(lines)


def grad_cam_label(grad_cams: GradCams, labels: list[str], choice: str = PREDICTED) -> str:
    """The Grad-CAM image's label: the class it shows, and that its map is empty when it is."""
    index = grad_cams.predicted if choice == PREDICTED else labels.index(choice)
    label = f"Grad-CAM: {labels[index]}" + (" (predicted)" if index == grad_cams.predicted else "")
    return label + (", empty map" if not grad_cams.maps[index].any() else "")


def predict_outputs(analysis: Analysis, pngs: PngStore) -> tuple:
    """The predict endpoint's answer: probabilities, how far to trust them, the maps as PNG files, and the
    Grad-CAMs for the session."""
    return (
        analysis.probabilities,
        assessment(analysis),
        pngs.save(analysis.grad_cams.overlay()),
        None if analysis.se_plot is None else pngs.save(analysis.se_plot),
        [(pngs.save(image), caption) for image, caption in analysis.stage_maps],
        [(pngs.save(image), caption) for image, caption in analysis.stem_maps],
        analysis.grad_cams,
    )


def map_gallery(title: str, columns: int, elem_id: str) -> gr.Gallery:
    """A heading, then one row of maps (a gallery's own floating label would cover the top of its maps)."""
    gr.Markdown(f"**{title}**")
    return gr.Gallery(
        label=title, show_label=False, format="png", columns=columns, rows=1, height="auto", elem_id=elem_id
    )


def build_demo(analyser: SliceAnalyser) -> gr.Blocks:
    labels = analyser.labels
    trained = bool(getattr(analyser.model.config, "training_info", None))
    pngs = PngStore()

    def predict(path: str | None):
        if path is None:
            raise gr.Error("No file given: upload an MRI slice first.", title="No image", print_exception=False)
        try:
            analysis = analyser.analyse(path)
        except UnusableUpload as error:
            # It stays until closed or the next analysis starts: the page has no other place that says why.
            raise gr.Error(str(error), title="Cannot analyse this file", print_exception=False, duration=None) from None
        for note in analysis.notes:
            gr.Warning(note, title=NOTE_TITLES[note])
        pngs.prune()
        return predict_outputs(analysis, pngs)

    def show_cam(choice: str, grad_cams: GradCams | None):
        if grad_cams is None:
            return None
        overlay = grad_cams.overlay(None if choice == PREDICTED else labels.index(choice))
        return gr.update(value=pngs.save(overlay), label=grad_cam_label(grad_cams, labels, choice))

    # Uploads are medical images: Gradio's copies of them (and of the maps) are deleted after an hour.
    with gr.Blocks(title="Brain tumor MRI classifier", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(
            model_status(analyser.model.config), elem_id="model-status", elem_classes=[] if trained else ["untrained"]
        )
        if trained:
            with gr.Accordion("Training details", open=False, elem_id="training-details"):
                gr.Markdown(training_details(analyser.model.config))
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="MRI slice: JPEG, PNG, WebP, BMP, TIFF or DICOM", elem_id="slice-upload")
                analyse_button = gr.Button("Analyse", variant="primary")
                examples = gr.Examples(
                    [[str(SPACE_DIR / "examples" / name)] for _, name in EXAMPLES],
                    inputs=upload,
                    example_labels=[f"{label}: {name}" for label, name in EXAMPLES],
                    label="Example slices (click one)",
                    api_visibility="private",
                )
            with gr.Column(scale=1):
                probabilities = gr.Label(
                    num_top_classes=len(labels),
                    label="Class probabilities" + ("" if trained else " (UNTRAINED)"),
                    elem_id="probabilities",
                )
                trust_words = gr.Markdown(label="Can this answer be trusted?", elem_id="verdict")
                trust = gr.JSON(label="The same, as the API returns it", elem_id="assessment")
            with gr.Column(scale=1):
                cam_image = gr.Image(label="Grad-CAM", format="png", interactive=False, elem_id="grad-cam")
                cam_class = gr.Radio([PREDICTED, *labels], value=PREDICTED, label="Grad-CAM for class")
        stage_maps = map_gallery("Attention-weighted activation per stage", 4, "stage-maps")
        with gr.Row():
            # The plot carries its own title: a floating label would hide its first panel.
            # Each at least 320 px wide: on a phone the row wraps, the plot above the maps.
            se_plot = gr.Image(
                label="SE channel weights per stage",
                show_label=False,
                format="png",
                interactive=False,
                min_width=320,
                elem_id="se-weights",
            )
            with gr.Column(min_width=320):
                stem_maps = map_gallery("Multi-scale stem branch responses", 3, "stem-maps")
        gr.Markdown(HOW_TO_READ)
        grad_cams_state = gr.State()

        results = [probabilities, trust, cam_image, se_plot, stage_maps, stem_maps, grad_cams_state]
        # Both routes to an analysis share one concurrency group, so that the model never runs twice at once.
        run = {"fn": predict, "inputs": upload, "outputs": results, "concurrency_id": "model", "js": CLOSE_MESSAGES}
        predicted = gr.on([upload.upload, analyse_button.click], **run, api_name="predict")
        from_example = examples.load_input_event.then(**run, api_visibility="private")
        cleared = [*results, trust_words]
        for event in (predicted, from_example):
            event.success(None, None, cam_class, js=f"() => {json.dumps(PREDICTED)}")
            event.success(verdict, trust, trust_words, api_visibility="private")
            # the label apart from the API's answer, which stays the overlay's file
            event.success(
                lambda cams: gr.update(label=grad_cam_label(cams, labels)),
                grad_cams_state,
                cam_image,
                api_visibility="private",
            )
            event.failure(lambda: [None] * len(results) + [NOT_ANALYSED], None, cleared, api_visibility="private").then(
                None, None, cam_class, js=f"() => {json.dumps(PREDICTED)}"
            )
        upload.clear(lambda: [None] * len(cleared), None, cleared, api_visibility="private")
        cam_class.input(show_cam, [cam_class, grad_cams_state], cam_image, api_visibility="private")
    return demo


def main() -> None:
    model_id = os.environ.get("MODEL_ID", DEFAULT_MODEL_ID)
    try:
        model, processor = load_model(model_id)
    except OSError as error:
        sys.exit(f"Cannot load the model MODEL_ID={model_id!r} (a Hub repo id or a local model folder): {error}")
    analyser = SliceAnalyser(model, processor)
    analyser.warm_up()
    demo = build_demo(analyser)
    # One analysis at a time: torch already spreads one slice over both CPU cores, so a second in parallel would
    # only slow both. Up to 64 requests wait (~0.3 s each through the server, so ~20 s for the last); past that a
    # "queue is full" answer beats an ever longer wait.
    demo.queue(default_concurrency_limit=1, max_size=64)
    demo.launch(
        max_file_size=MAX_UPLOAD_BYTES,
        theme=gr.themes.Soft(),
        css=CSS,
        head=PASTE_SCRIPT,
        ssr_mode=False,  # no Node server to start: the page is ready sooner
        state_session_capacity=1000,  # a session's GradCams is ~0.25 MB: at most ~250 MB in all
    )


if __name__ == "__main__":
    main()
