"""The improved ResNet34 as a transformers custom model: architecture, switches, processor, remote-code loading."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from brain_resnet.modeling import (
    BrainResNetConfig,
    BrainResNetForImageClassification,
    BrainResNetImageProcessor,
    BrainResNetModel,
)
from brain_resnet.modeling import image_processing_brain_resnet as processing
from brain_resnet.modeling.image_processing_brain_resnet import BrainResNetImageClassificationPipeline

REPO = Path(__file__).resolve().parents[1]
SLICE = Path("glioma") / "figshare-0209.jpg"

# torchvision.models.resnet34(num_classes=4).  torchvision cannot be imported beside the CPU torch wheel, so the
# count is written down (it is 21,284,672 for the 1000-class ImageNet head minus 512*996 + 996 weights).
TORCHVISION_RESNET34_PARAMS_4_CLASSES = 21_286_724

RESNET34 = {"stem_type": "conv", "downsample_type": "conv", "attention_type": "none"}
ABLATIONS = {
    "improved": {},
    "resnet34": RESNET34,
    "no-multiscale": {"stem_type": "conv"},
    "no-inception": {"downsample_type": "conv"},
    "no-se": {"attention_type": "none"},
}


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(**overrides) -> BrainResNetForImageClassification:
    torch.manual_seed(0)
    return BrainResNetForImageClassification(BrainResNetConfig(**overrides)).eval()


def test_all_switches_off_is_torchvision_resnet34():
    assert count_params(build(num_channels=3, **RESNET34)) == TORCHVISION_RESNET34_PARAMS_4_CLASSES


@pytest.mark.parametrize("num_channels", [1, 3])
def test_improved_model_has_at_most_80_percent_of_resnet34_parameters(num_channels):
    improved = count_params(build(num_channels=num_channels))
    baseline = count_params(build(num_channels=num_channels, **RESNET34))
    assert improved <= 0.80 * baseline


def test_defaults_are_the_papers_improved_model():
    config = BrainResNetConfig()
    assert (config.stem_type, config.downsample_type, config.attention_type) == ("multiscale", "inception", "se")
    assert (config.depths, config.hidden_sizes) == ([3, 4, 6, 3], [64, 128, 256, 512])
    assert config.id2label == {0: "glioma", 1: "meningioma", 2: "notumor", 3: "pituitary"}


@pytest.mark.parametrize(
    "bad",
    [
        {"stem_type": "vit"},
        {"stem_branch_channels": [32, 16, 8]},
        {"depths": [3, 4]},
        {"stem_kernel_sizes": [3, 4, 7]},  # an even kernel's output is a pixel larger: no concatenation
    ],
)
def test_invalid_config_is_refused(bad):
    with pytest.raises(ValueError):
        BrainResNetConfig(**bad)


@pytest.mark.parametrize("variant", ABLATIONS)
def test_every_variant_trains_saves_and_reloads(variant, tmp_path):
    model = build(**ABLATIONS[variant]).train()
    pixel_values = torch.randn(2, 1, 64, 64)
    out = model(pixel_values, labels=torch.tensor([0, 3]))
    out.loss.backward()
    assert out.logits.shape == (2, 4)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    model.eval().save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    reloaded = BrainResNetForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values).logits, model(pixel_values).logits)


def test_hidden_states_and_se_weights_have_documented_shapes():
    model = build()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 224, 224), output_hidden_states=True, output_attentions=True)
    assert [tuple(h.shape) for h in out.hidden_states] == [
        (2, 64, 56, 56),
        (2, 64, 56, 56),
        (2, 128, 28, 28),
        (2, 256, 14, 14),
        (2, 512, 7, 7),
    ]
    # One SE per residual block: the Inception reduction replaces the first block of stages 2-4.
    assert [a.shape[1] for a in out.attentions] == [64] * 3 + [128] * 3 + [256] * 5 + [512] * 2
    assert all(a.shape[0] == 2 and a.min() >= 0 and a.max() <= 1 for a in out.attentions)

    backbone = BrainResNetModel(BrainResNetConfig(downsample_type="conv")).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 1, 96, 96), output_attentions=True)
    assert len(out.attentions) == 16 and out.pooler_output.shape == (1, 512, 1, 1)


def test_mirror_average_gives_a_slice_and_its_mirror_image_one_answer():
    plain, averaging = build(), build(mirror_average=True)  # the same weights
    slices = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        answer, mirrored_answer = averaging(slices).logits, averaging(slices.flip(-1)).logits
        own, mirror_image = plain(slices).logits, plain(slices.flip(-1)).logits
        states = averaging(slices, output_hidden_states=True).hidden_states

    assert not torch.allclose(own, mirror_image, atol=1e-3)  # the network alone tells them apart
    torch.testing.assert_close(answer, mirrored_answer)
    torch.testing.assert_close(answer, (own + mirror_image) / 2)
    assert [s.shape[0] for s in states] == [2] * len(states)  # the slices' own, not their mirror images'


def test_no_attentions_without_se():
    with torch.no_grad():
        out = build(attention_type="none")(torch.randn(1, 1, 64, 64), output_attentions=True)
    assert out.attentions == ()


def test_wrong_channel_count_gets_a_clear_error():
    with pytest.raises(ValueError, match="channels"):
        build()(torch.randn(1, 3, 64, 64))


# --- image processor -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slice_image(brain_mri_data) -> Image.Image:
    return Image.open(brain_mri_data / SLICE).convert("L")


def as_mode(image: Image.Image, mode: str) -> Image.Image:
    if mode == "I;16":  # 8-bit -> 16-bit by *257 keeps the picture identical up to scale
        return Image.fromarray(np.asarray(image).astype(np.uint16) * 257)
    return image.convert(mode)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16", "CMYK", "P", "LA", "I", "F"])
def test_processor_accepts_every_image_mode(slice_image, mode):
    processor = BrainResNetImageProcessor()
    reference = processor(slice_image).pixel_values
    pixel_values = processor(as_mode(slice_image, mode)).pixel_values
    assert pixel_values.shape == (1, 1, 224, 224) and pixel_values.dtype == torch.float32
    assert torch.isfinite(pixel_values).all()
    assert pixel_values.min() >= -1 and pixel_values.max() <= 1
    # CMYK and palette conversions are lossy; the rest carry the same picture.
    tolerance = 0.1 if mode in ("CMYK", "P") else 0.02
    assert (pixel_values - reference).abs().mean() < tolerance


def test_processor_accepts_arrays_tensors_and_batches(slice_image):
    processor = BrainResNetImageProcessor()
    reference = processor(slice_image).pixel_values
    gray = np.array(slice_image)
    rgb = np.array(slice_image.convert("RGB"))
    for image in (gray, rgb, rgb.transpose(2, 0, 1), torch.from_numpy(gray), torch.from_numpy(rgb).permute(2, 0, 1)):
        torch.testing.assert_close(processor(image).pixel_values, reference, atol=0.02, rtol=0)
    assert processor([slice_image, gray, rgb]).pixel_values.shape == (3, 1, 224, 224)
    assert processor(np.stack([rgb, rgb])).pixel_values.shape == (2, 1, 224, 224)


def test_an_array_whose_first_and_last_axes_could_both_be_channels_is_read_channels_first():
    """A 3-pixel-wide strip of an RGB image as (3, H, 3): torch's channels-first reading, not a 3-row image."""
    strip = torch.zeros(3, 10, 3)
    strip[:, :, 0] = 1.0  # the first column white in every channel
    gray = BrainResNetImageProcessor().to_grayscale(strip)
    assert gray.shape == (10, 3) and torch.allclose(gray[:, 0], torch.ones(10)) and gray[:, 1:].abs().max() == 0


def test_processor_output_for_a_three_channel_model(slice_image):
    processor = BrainResNetImageProcessor(num_channels=3, size=128)
    pixel_values = processor(slice_image).pixel_values
    assert pixel_values.shape == (1, 3, 128, 128)
    assert torch.equal(pixel_values[:, 0], pixel_values[:, 2])


def test_processor_ignores_brightness_contrast_and_bit_depth(slice_image):
    processor = BrainResNetImageProcessor()
    array = np.asarray(slice_image).astype(np.float32)
    reference = processor(array).pixel_values
    for transformed in (array * 0.4, array * 200.0 + 50.0, array.astype(np.uint16) * 257):
        torch.testing.assert_close(processor(transformed).pixel_values, reference, atol=0.02, rtol=0)


def test_processor_crops_to_the_brain_whatever_the_framing(slice_image):
    """A slice pasted small into a wide black canvas comes out framed like the original."""
    processor = BrainResNetImageProcessor()
    reference = processor(slice_image).pixel_values
    canvas = Image.new("L", (900, 400))
    canvas.paste(slice_image.resize((200, 200)), (600, 150))
    # The residue is the blur of the 256 -> 200 -> 224 px resampling; without the crop the difference is ~0.4.
    assert (processor(canvas).pixel_values - reference).abs().mean() < 0.1


def on_screen(slice_image: Image.Image, burned_in: bool) -> Image.Image:
    """The slice on a black screen; `burned_in`: with a viewer's text in two corners, a side letter and a scale bar."""
    screen = Image.new("L", (slice_image.width + 120, slice_image.height + 120))
    screen.paste(slice_image, (60, 60))
    if burned_in:
        draw = ImageDraw.Draw(screen)
        draw.text((5, 5), "PATIENT 12345  SE:3 IM:17", fill=255)
        draw.text((5, screen.height - 15), "TR 500 TE 15  W:1200 L:600", fill=255)
        draw.text((screen.width - 30, 5), "R", fill=255)
        draw.line([(screen.width - 20, 30), (screen.width - 20, 130)], fill=255, width=2)
    return screen


def test_processor_leaves_out_burned_in_text(slice_image):
    """A viewer's screenshot is read as the slice alone: its text and markers neither darken the slice nor shrink
    the brain in the frame. With foreground_min_piece_share 0 (releases before 2026-11-28) they do both."""
    plain = BrainResNetImageProcessor()(on_screen(slice_image, burned_in=False)).pixel_values
    screenshot = on_screen(slice_image, burned_in=True)
    torch.testing.assert_close(BrainResNetImageProcessor()(screenshot).pixel_values, plain, atol=1e-3, rtol=0)
    every_piece = BrainResNetImageProcessor(foreground_min_piece_share=0.0)(screenshot).pixel_values
    assert (every_piece - plain).abs().mean() > 0.2


def test_processor_values_in_unit_range_without_normalisation(slice_image):
    pixel_values = BrainResNetImageProcessor()(slice_image, do_normalize=False, size=96).pixel_values
    assert pixel_values.shape == (1, 1, 96, 96)
    assert pixel_values.min() == 0 and 0.5 < pixel_values.max() <= 1


@pytest.mark.parametrize("bad", [np.zeros((0, 5)), np.zeros((5, 5, 7)), "not an image"])
def test_processor_refuses_what_is_not_an_image(bad):
    with pytest.raises((ValueError, TypeError)):
        BrainResNetImageProcessor()(bad)


def test_processor_handles_a_black_image():
    pixel_values = BrainResNetImageProcessor()(np.zeros((50, 60), dtype=np.uint8)).pixel_values
    assert torch.isfinite(pixel_values).all() and pixel_values.shape == (1, 1, 224, 224)


def test_processor_reads_non_finite_pixels_as_background(slice_image):
    """A float map masked with NaN outside the brain reads as the slice on black; NaN must not reach the model,
    whose logits would all be NaN (and argmax "glioma")."""
    processor = BrainResNetImageProcessor()
    array = np.asarray(slice_image).astype(np.float32)
    masked = np.where(array < 5, np.nan, array)
    masked[0, 0] = np.inf
    expected = processor(np.where(np.isfinite(masked), masked, array[array >= 5].min())).pixel_values
    assert torch.equal(processor(masked).pixel_values, expected)
    with pytest.raises(ValueError, match="no finite pixel"):
        processor(np.full((40, 40), np.nan, dtype=np.float32))


def test_processor_is_not_fooled_by_a_speck_at_full_scale(slice_image):
    """12-bit data in a 16-bit file with a marker at 65535: the brain, not the marker, sets the intensity scale
    (else the slice turns black and the release calls a glioma "notumor")."""
    processor = BrainResNetImageProcessor()
    twelve_bit = np.asarray(slice_image).astype(np.uint16) * 16
    marked = twelve_bit.copy()
    marked[:3, :3] = 65535
    torch.testing.assert_close(processor(marked).pixel_values, processor(twelve_bit).pixel_values, atol=0.02, rtol=0)


def test_processor_keeps_transparency_black_for_arrays_as_for_pil(slice_image):
    """An RGBA or LA array reads like the PIL image it came from: transparent pixels are background."""
    processor = BrainResNetImageProcessor()
    gray = np.asarray(slice_image)
    rgba = np.dstack([gray, gray, gray, np.where(gray < 10, 0, 255)]).astype(np.uint8)
    rgba[gray < 10, :3] = 255  # a white background, made transparent
    pil = Image.fromarray(rgba, "RGBA")
    expected = processor(pil).pixel_values
    as_other_types = (rgba.astype(np.int64), rgba.astype(np.float32), rgba.astype(np.float32) / 255)
    for image in (rgba, torch.from_numpy(rgba).permute(2, 0, 1), np.asarray(pil.convert("LA")), *as_other_types):
        torch.testing.assert_close(processor(image).pixel_values, expected, atol=1e-5, rtol=0)
    assert (processor(rgba[..., :3]).pixel_values - expected).abs().max() > 1  # the white background, read


def test_processor_takes_a_very_long_strip_in_bounded_memory():
    """Padding a 40 x 200,000 strip to a square would take 160 GB; it is shrunk to 2,048 px a side first."""
    strip = np.random.default_rng(0).integers(0, 255, (40, 200_000), dtype=np.uint8)
    pixel_values = BrainResNetImageProcessor()(strip, size=64).pixel_values
    assert pixel_values.shape == (1, 1, 64, 64) and torch.isfinite(pixel_values).all()


def test_processor_maps_the_foregrounds_percentile_to_one():
    """A few pixels far brighter than the brain (vessels, fat, a hot spot) do not darken the slice: the foreground's
    99.5th percentile, not its maximum, becomes white."""
    image = torch.zeros(100, 100)
    image[20:80, 20:80] = 100.0
    image[50, 30:40] = 200.0  # 10 of the 3,600 foreground pixels
    scaled = BrainResNetImageProcessor().scale_intensity(image)
    assert scaled[0, 0] == 0 and scaled[25, 25] == pytest.approx(1.0) and scaled.max() == 1


@pytest.mark.parametrize("count", [1, 2, 7, 40_000])
@pytest.mark.parametrize("q", [0.0, 0.5, 0.995, 1.0])
def test_the_intensity_scale_is_torch_quantile_to_the_bit(count, q):
    """The release was trained on slices scaled by torch.quantile; the quicker selection must give the same value."""
    values = torch.rand(count, generator=torch.Generator().manual_seed(count)) * 255
    assert torch.equal(processing._quantile(values, q), torch.quantile(values, q))


def _pieces_by_flood_fill(cells: np.ndarray) -> np.ndarray:
    """Each True cell labelled by the smallest flat index of the cells it reaches in steps of at most
    _PIECES_REACH rows and columns (inf elsewhere): the definition, cell by cell."""
    reach = processing._PIECES_REACH
    height, width = cells.shape
    labels = np.full(cells.shape, np.inf)
    for start in zip(*np.nonzero(cells), strict=True):
        if labels[start] < np.inf:
            continue
        piece, frontier = {start}, [start]
        while frontier:
            row, col = frontier.pop()
            near = cells[max(row - reach, 0) : row + reach + 1, max(col - reach, 0) : col + reach + 1]
            for r, c in zip(*np.nonzero(near), strict=True):
                cell = (r + max(row - reach, 0), c + max(col - reach, 0))
                if cell not in piece:
                    piece.add(cell)
                    frontier.append(cell)
        smallest = min(r * width + c for r, c in piece)
        for cell in piece:
            labels[cell] = smallest
    return labels


def test_pieces_are_the_cells_within_reach_of_one_another():
    """Burned-in text is told from the head by these pieces: scattered specks, and a winding strip whose label has
    to travel far (the head's outline), are labelled as the definition says."""
    generator = np.random.default_rng(0)
    grids = [generator.random((64, 64)) < density for density in (0.01, 0.03, 0.1)]
    winding = np.zeros((64, 64), dtype=bool)
    winding[::8, 1:63] = True
    winding[np.arange(64) % 16 < 8, 62] = True
    winding[np.arange(64) % 16 >= 8, 1] = True  # rows 8 apart join only at alternate ends: one long snake
    for cells in [*grids, winding, np.zeros((5, 9), dtype=bool), np.ones((3, 70), dtype=bool)]:
        expected = _pieces_by_flood_fill(cells)
        assert np.array_equal(processing._labelled_pieces(torch.from_numpy(cells)).numpy(), expected)


def test_processor_without_intensity_scaling_reads_8_and_16_bit_ranges():
    """do_scale_intensity=False divides by the image's bit depth: a full-white 8-bit pixel is white, as is the same
    picture in 16 bits."""
    processor = BrainResNetImageProcessor(do_scale_intensity=False, do_crop_foreground=False, size=64)
    gradient = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    gradient[:, -1] = 255
    eight_bit = processor(gradient, do_normalize=False).pixel_values
    assert eight_bit.max() == pytest.approx(1.0) and eight_bit[0, 0, 0, 32] == pytest.approx(128 / 255)
    sixteen_bit = processor(gradient.astype(np.uint16) * 257, do_normalize=False).pixel_values
    torch.testing.assert_close(sixteen_bit, eight_bit)


def test_processor_reads_a_colour_array_as_pil_reads_the_colour_image(slice_image):
    """Colour becomes ITU-R 601 luma for arrays as for PIL images: red weighs 0.299, blue 0.114."""
    gray = np.asarray(slice_image)
    half = gray.shape[1] // 2
    colour = np.zeros((*gray.shape, 3), dtype=np.uint8)
    colour[:, :half, 0] = gray[:, :half]  # the left half red, the right half blue
    colour[:, half:, 2] = gray[:, half:]
    processor = BrainResNetImageProcessor()
    expected = processor(Image.fromarray(colour, "RGB")).pixel_values
    for image in (colour, torch.from_numpy(colour).permute(2, 0, 1)):
        torch.testing.assert_close(processor(image).pixel_values, expected, atol=0.02, rtol=0)


def test_crop_frames_the_brain_centred_with_its_margin():
    """A wide brain is cut to its extent plus a 4% margin and sits in the middle of its square frame."""
    image = torch.zeros(100, 100)
    image[40:60, 20:80] = 1.0
    cropped = BrainResNetImageProcessor().crop_foreground(image)
    expected = torch.zeros(64, 64)  # 60 px wide plus 2 px a side; 24 px tall, padded 20 px above and below
    expected[22:42, 2:62] = 1.0
    assert torch.equal(cropped, expected)


def pipeline_of(model: BrainResNetForImageClassification) -> BrainResNetImageClassificationPipeline:
    return BrainResNetImageClassificationPipeline(model=model, image_processor=BrainResNetImageProcessor(size=64))


def test_pipeline_turns_images_upright_by_their_exif_orientation(slice_image, tmp_path):
    """A slice stored sideways with an EXIF orientation tag (a phone photo, some exports) is classified as it is
    displayed, whether given as a file or as a PIL image."""
    classifier = pipeline_of(build(calibration_temperature=0.02))  # sharp scores: a turned slice scores otherwise
    upright = {p["label"]: p["score"] for p in classifier(slice_image)}
    stored = slice_image.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turn 90 degrees clockwise to display
    stored.save(tmp_path / "sideways.png", exif=exif)
    as_stored = {p["label"]: p["score"] for p in classifier(stored)}
    assert as_stored != pytest.approx(upright, abs=1e-3)  # the network alone tells them apart
    for image in (str(tmp_path / "sideways.png"), Image.open(tmp_path / "sideways.png")):
        assert {p["label"]: p["score"] for p in classifier(image)} == pytest.approx(upright, abs=1e-5)


def test_pipeline_serves_a_model_loaded_in_half_precision(slice_image, tmp_path):
    """pipeline(..., dtype=torch.bfloat16) or a model cast to half precision gets inputs of its own dtype."""
    classifier = pipeline_of(build().to(torch.bfloat16))
    slice_image.save(tmp_path / "slice.png")
    for image in (slice_image, str(tmp_path / "slice.png")):
        scores = classifier(image)
        assert sorted(p["label"] for p in scores) == ["glioma", "meningioma", "notumor", "pituitary"]
        assert sum(p["score"] for p in scores) == pytest.approx(1, abs=1e-2)


def test_refitting_a_models_detector_replaces_its_means_and_precision():
    """set_familiarity on a model that already carries a detector (a release refitted) installs the new one whole."""
    model = build(familiarity_threshold=1.0)
    means = torch.randn(4, 512) * 10
    model.set_familiarity(means, torch.eye(512) * 2, threshold=5.0)
    torch.testing.assert_close(model.familiarity_means, means)
    distance = model.familiarity_distance(means[2:3] + 1)  # 1 from class 2's mean in every feature
    torch.testing.assert_close(distance, torch.tensor([2.0 * 512]))
    assert model.config.familiarity_threshold == 5.0


# --- remote code -----------------------------------------------------------------------------------------------

REMOTE_CODE_FILES = sorted((REPO / "modeling").glob("*_brain_resnet.py"))


@pytest.mark.parametrize("path", REMOTE_CODE_FILES, ids=lambda p: p.name)
def test_remote_code_imports_only_torch_transformers_and_siblings(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots = {"." if node.level else node.module.split(".")[0]}
        else:
            if isinstance(node, ast.Name):
                assert node.id != "open", f"{path.name} does I/O"
            continue
        # PIL: transformers' own image pipelines need it; the pipeline opens image files with it
        allowed = {"torch", "transformers", "PIL", ".", "math", "dataclasses", "copy", "os"}
        assert roots <= allowed, f"{path.name} imports {roots}"


OFFLINE_LOAD = """
import json, sys, numpy as np, torch
from PIL import Image
from transformers import (AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline)
folder, image = sys.argv[1], sys.argv[2]
sixteen_bit = folder + "/slice-16-bit.png"  # the slice's 8 bits in the top byte and 4 noise bits below
gray = np.asarray(Image.open(image).convert("L")).astype(np.uint16)
Image.fromarray(gray * 256 + np.random.default_rng(0).integers(0, 16, gray.shape, dtype=np.uint16)).save(sixteen_bit)
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
backbone = AutoModel.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
with torch.no_grad():
    logits = model(**processor(torch.load(folder + "/probe.pt"), return_tensors="pt")).logits
    sixteen_bit_probabilities = model(**processor(Image.open(sixteen_bit))).logits.softmax(-1)[0]
classifier = pipeline("image-classification", model=folder, trust_remote_code=True)
print(json.dumps({
    "classes": [type(config).__name__, type(backbone).__name__, type(model).__name__, type(processor).__name__],
    "dtype": str(next(model.parameters()).dtype),
    "logits": logits.tolist(),
    "pipeline": classifier(image),
    "pipeline_16_bit": {p["label"]: p["score"] for p in classifier(sixteen_bit)},
    "model_16_bit": {model.config.id2label[i]: p for i, p in enumerate(sixteen_bit_probabilities.tolist())},
}))
"""


def test_saved_folder_loads_offline_in_a_fresh_process(tmp_path, brain_mri_data):
    model = build()
    processor = BrainResNetImageProcessor()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert set(config["auto_map"]) >= {"AutoConfig", "AutoModel", "AutoModelForImageClassification"}
    assert {p.name for p in tmp_path.glob("*.py")} == {p.name for p in REMOTE_CODE_FILES}

    probe = [torch.rand(80, 90), torch.rand(120, 70)]
    torch.save(probe, tmp_path / "probe.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    # Run outside the repo so that the local `modeling` package cannot be imported by accident.
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_LOAD, str(tmp_path), str(brain_mri_data / SLICE)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["classes"] == [
        "BrainResNetConfig",
        "BrainResNetModel",
        "BrainResNetForImageClassification",
        "BrainResNetImageProcessor",
    ]
    assert loaded["dtype"] == "torch.float32"
    with torch.no_grad():
        expected = model(**processor(probe)).logits
    torch.testing.assert_close(torch.tensor(loaded["logits"]), expected, atol=1e-4, rtol=1e-4)
    labels = {prediction["label"] for prediction in loaded["pipeline"]}
    assert labels == {"glioma", "meningioma", "notumor", "pituitary"}
    assert sum(prediction["score"] for prediction in loaded["pipeline"]) == pytest.approx(1, abs=1e-4)
    # transformers' own pipeline would hand the processor an 8-bit RGB copy of the 16-bit file
    assert loaded["pipeline_16_bit"] == pytest.approx(loaded["model_16_bit"], abs=1e-5)


def test_backbone_outputs_keep_their_documented_order():
    backbone = BrainResNetModel(BrainResNetConfig()).eval()
    pixel_values = torch.randn(1, 1, 64, 64)
    outputs = backbone(pixel_values, output_hidden_states=True, output_attentions=True)
    assert list(outputs.keys()) == ["last_hidden_state", "pooler_output", "hidden_states", "attentions"]
    as_tuple = backbone(pixel_values, output_hidden_states=True, return_dict=False)
    assert as_tuple[1].shape == (1, 512, 1, 1) and isinstance(as_tuple[2], tuple)


def test_default_config_maps_labels_both_ways():
    config = BrainResNetConfig()
    assert all(config.label2id[label] == index for index, label in config.id2label.items())


def released(tmp_path) -> Path:
    """A saved model with an unfamiliar-image detector, as make_release.py writes one."""
    model = build()
    model.set_familiarity(torch.randn(4, 512), torch.eye(512), threshold=100.0)
    model.save_pretrained(tmp_path)
    BrainResNetImageProcessor(size=64).save_pretrained(tmp_path)
    return tmp_path


def test_fine_tuning_on_another_label_set_drops_the_detector(tmp_path):
    """With new labels the detector's class means cannot load; left in place they would be zeros (or garbage) and
    every unfamiliarity meaningless."""
    folder = released(tmp_path)
    pixel_values = torch.randn(2, 1, 64, 64)
    same = BrainResNetForImageClassification.from_pretrained(folder).eval()
    assert same(pixel_values).unfamiliarity.shape == (2,)
    tuned, info = BrainResNetForImageClassification.from_pretrained(
        folder, num_labels=2, id2label={0: "a", 1: "b"}, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert tuned.eval()(pixel_values).unfamiliarity is None and tuned.config.familiarity_threshold is None
    assert not hasattr(tuned, "familiarity_means") and "error_msgs" in info


def test_trainer_predictions_are_the_logits(tmp_path):
    """The HF Trainer's compute_metrics gets the logits array, as for any image classifier, not a tuple with the
    unfamiliarity."""
    from transformers import Trainer, TrainingArguments

    model = BrainResNetForImageClassification.from_pretrained(released(tmp_path))
    rows = [{"pixel_values": torch.randn(1, 64, 64), "labels": i % 4} for i in range(3)]
    arguments = TrainingArguments(output_dir=str(tmp_path / "trainer"), report_to=[], use_cpu=True)
    predictions = Trainer(model=model, args=arguments).predict(rows).predictions
    assert isinstance(predictions, np.ndarray) and predictions.shape == (3, 4)
