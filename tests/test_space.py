"""The Gradio Space (space/app.py): decoding uploads, and the launched app through gradio_client.

The server tests launch `python space/app.py` as a subprocess on a free port, serving a freshly initialised model
saved to a temporary folder, exactly as a user or the Hub would start it.
"""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from brain_resnet.modeling import BrainResNetConfig, BrainResNetForImageClassification, BrainResNetImageProcessor

ROOT = Path(__file__).resolve().parents[1]
SPACE_DIR = ROOT / "space"
EXAMPLES = sorted((SPACE_DIR / "examples").glob("*.jpg"))
LABELS = ["glioma", "meningioma", "notumor", "pituitary"]
READY_TIMEOUT_S = 90  # generous: the Space promises 15 s, but CI machines may be busy

sys.path.insert(0, str(SPACE_DIR))
import app  # noqa: E402


def colour_photo(path: Path) -> Path:
    """A red-to-yellow gradient: no MRI slice, in colour."""
    pixels = np.zeros((120, 160, 3), np.uint8)
    pixels[..., 0], pixels[..., 1] = np.linspace(0, 255, 160), 90
    Image.fromarray(pixels).save(path)
    return path


def save_random_model(folder: Path) -> Path:
    """Random weights, made honest the way make_release.py does it, with the example slices as "training data": a
    calibration temperature, and class means and precision of their pooled features with a threshold that the
    examples stay below (a colour photo lies ten times further out than the threshold)."""
    torch.manual_seed(0)
    model, processor = BrainResNetForImageClassification(BrainResNetConfig()).eval(), BrainResNetImageProcessor()
    with torch.no_grad():
        pixel_values = processor([Image.open(path) for path in EXAMPLES], return_tensors="pt")["pixel_values"]
        features = model.brain_resnet(pixel_values).pooler_output.flatten(1)
    means = features.reshape(4, 2, -1).mean(dim=1)  # EXAMPLES: two slices per class, in label order
    precision = torch.diag(1 / features.var(dim=0).clamp(min=1e-6))
    model.set_familiarity(means, precision, threshold=1.0)
    model.config.familiarity_threshold = 2 * model.familiarity_distance(features).max().item()
    model.config.calibration_temperature = 1.5
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_space(model_dir: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    """Start `python space/app.py` and wait until it serves its page; returns the process and its URL."""
    port = free_port()
    env = {**os.environ, "MODEL_ID": str(model_dir), "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1"}
    env.pop("GRADIO_SERVER_NAME", None)
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, str(SPACE_DIR / "app.py")], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Space exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the Space did not serve within {READY_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Iterator[dict]:
    folder = tmp_path_factory.mktemp("space")
    process, url = launch_space(save_random_model(folder / "model"), folder / "server.log")
    yield {"url": url, "log": folder / "server.log"}
    stop(process)


@pytest.fixture(scope="module")
def client(space, tmp_path_factory) -> Client:
    downloads = tmp_path_factory.mktemp("downloads")
    return Client(space["url"], verbose=False, max_workers=50, download_files=str(downloads), analytics_enabled=False)


def confidences(answer) -> dict[str, float]:
    return {entry["label"]: entry["confidence"] for entry in answer[0]["confidences"]}


def assert_full_answer(answer) -> None:
    """Four class probabilities, the assessment, the Grad-CAM overlay, the SE plot, four stage maps and three stem
    maps."""
    label, trust, cam, se_plot, stage_maps, stem_maps = answer
    assert set(trust) == {"unfamiliar", "unfamiliarity", "warnings"}
    assert trust["unfamiliar"] == (trust["unfamiliarity"] > 1)
    assert sorted(confidences(answer)) == LABELS
    assert sum(confidences(answer).values()) == pytest.approx(1.0, abs=1e-4)
    assert label["label"] == max(confidences(answer), key=confidences(answer).get)
    with Image.open(cam) as overlay:
        assert overlay.format == "PNG" and overlay.size == (224, 224) and overlay.mode == "RGB"
        assert np.asarray(overlay).std() > 10  # an actual picture, not a blank
    with Image.open(se_plot) as plot:
        assert plot.width >= 400
    assert [item["caption"] for item in stage_maps] == [
        f"stage {n} · {c} ch" for n, c in zip(range(1, 5), (64, 128, 256, 512), strict=True)
    ]
    assert [item["caption"].split(" ·")[0] for item in stem_maps] == ["3×3", "5×5", "7×7"]
    for item in [*stage_maps, *stem_maps]:
        assert Path(item["image"]).stat().st_size > 0


def predict(client: Client, path: Path):
    return client.predict(handle_file(str(path)), api_name="/predict")


# --- uploads the Space reads (no server needed) -----------------------------------------------------------------


def brain_like(size: int = 128) -> np.ndarray:
    """A bright disk on black with a brighter spot, in [0, 1]."""
    rows, cols = np.mgrid[:size, :size]
    disk = ((rows - size / 2) ** 2 + (cols - size / 2) ** 2 < (size / 3) ** 2) * 0.6
    spot = ((rows - size / 3) ** 2 + (cols - size / 2) ** 2 < (size / 12) ** 2) * 0.4
    return disk + spot


def write_dicom(path: Path, pixels: np.ndarray | None, **attributes) -> Path:
    """An uncompressed MR DICOM file; without `pixels` it holds no image at all."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = MRImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "MR"
    if pixels is not None:
        dataset.set_pixel_data(pixels.astype(np.uint16), photometric_interpretation="MONOCHROME2", bits_stored=16)
    for name, value in attributes.items():
        setattr(dataset, name, value)
    dataset.save_as(path, enforce_file_format=True)
    return path


def image_of_mode(mode: str) -> Image.Image:
    values = brain_like()
    if mode in ("I;16", "F"):
        return Image.fromarray((values * 4000).astype(np.uint16 if mode == "I;16" else np.float32))
    gray = Image.fromarray((values * 255).astype(np.uint8))
    return gray.convert(mode)


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("gray.jpg", "L"),
        ("colour.png", "RGB"),
        ("transparent.png", "RGBA"),
        ("sixteen_bit.png", "I;16"),
        ("sixteen_bit.tif", "I;16"),
        ("float.tif", "F"),
        ("colour.webp", "RGB"),
        ("gray.bmp", "L"),
        ("still.gif", "P"),
    ],
)
def test_supported_images_decode_to_the_models_view(tmp_path, name, mode):
    path = tmp_path / name
    image_of_mode(mode).save(path)

    image = app.load_slice(path)
    view = BrainResNetImageProcessor().preprocess_one(image)

    assert view.shape == (224, 224) and view.max() == 1 and view.min() == 0
    if mode == "I;16":  # 16 bits survive decoding: nothing is squeezed through 8 bits
        assert np.asarray(image).max() == 4000


def window_ramp(tmp_path: Path, **attributes) -> np.ndarray:
    """Decode a DICOM whose columns ramp 0, 10, ..., 1990 in stored values."""
    ramp = np.tile(np.arange(200) * 10, (64, 1))
    return app.load_slice(write_dicom(tmp_path / "ramp.dcm", ramp, **attributes))


@pytest.mark.parametrize(
    "attributes",
    [
        {"WindowCenter": 1000, "WindowWidth": 400},
        {"RescaleSlope": 1, "RescaleIntercept": -1000, "WindowCenter": 0, "WindowWidth": 400},  # window in units
    ],
)
def test_dicom_uses_its_stored_window(tmp_path, attributes):
    decoded = window_ramp(tmp_path, **attributes)

    row = decoded[0]
    assert (row[:79] == row.min()).all()  # stored values up to 780 lie below the window (800 to 1200)
    assert (row[122:] == row.max()).all()  # from 1220 above it
    assert (np.diff(row[81:119]) > 0).all()  # the window itself keeps its contrast


def test_monochrome1_dicom_is_inverted(tmp_path):
    decoded = window_ramp(tmp_path, WindowCenter=1000, WindowWidth=400, PhotometricInterpretation="MONOCHROME1")

    assert decoded[0, 0] == decoded.max() and decoded[0, -1] == decoded.min()


def test_palette_colour_dicom_is_read_through_its_palette(tmp_path):
    """PALETTE COLOR pixels are indices into a colour table: read as grey levels, an inverted-grey palette would
    show the slice in negative."""
    indices = (brain_like() * 255).astype(np.uint8)
    inverted = (65535 - np.arange(256) * 257).astype("<u2").tobytes()
    path = write_dicom(tmp_path / "palette.dcm", indices)
    dataset = pydicom.dcmread(path)
    dataset.PhotometricInterpretation = "PALETTE COLOR"
    for colour in ("Red", "Green", "Blue"):
        dataset.add_new(f"{colour}PaletteColorLookupTableDescriptor", "US", [256, 0, 16])
        dataset.add_new(f"{colour}PaletteColorLookupTableData", "OW", inverted)
    dataset.save_as(path)

    decoded = app.load_slice(path)

    assert decoded.shape == (*indices.shape, 3)
    assert (decoded[..., 0] == 65535 - indices.astype(np.int64) * 257).all()


def test_a_jpeg_with_an_embedded_second_image_is_read_as_its_first(tmp_path):
    """Cameras and phones store previews or a second view in the JPEG (MPO); viewers show the first image."""
    path = tmp_path / "photo.jpg"
    first = Image.fromarray((brain_like() * 255).astype(np.uint8)).convert("RGB")
    first.save(path, format="MPO", save_all=True, append_images=[first.resize((40, 40))])

    decoded = app.load_slice(path)

    assert decoded.size == first.size


def test_an_image_is_read_upright_as_its_exif_orientation_says(tmp_path):
    """Phones and some exports store a slice's pixels sideways with an EXIF orientation tag, which every viewer
    obeys: the model must see (and the maps lie over) the slice upright, not turned a quarter."""
    upright = np.zeros((160, 96), np.uint8)
    upright[:40] = 255  # bright at the top
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, quality=95)

    decoded = np.asarray(app.load_slice(path))

    assert decoded.shape == upright.shape
    assert decoded[:40].mean() > 200 and decoded[50:].mean() < 50


def test_model_status_shouts_only_for_untrained_weights():
    untrained = app.model_status(BrainResNetConfig())
    trained = app.model_status(BrainResNetConfig(training_info={"dataset": "brain-tumor-mri-4k", "epochs": 40}))

    assert "UNTRAINED" in untrained and "random" in untrained and "meaningless" in untrained
    assert "UNTRAINED" not in trained and "Model: trained." in trained


def test_training_details_list_the_settings_and_scores_once():
    """The page's collapsed "Training details": every scalar of training_info, a line each, rounded; the in-sample
    accuracies only when no held-out headline figure is shown above them."""
    config = BrainResNetConfig(training_info={"dataset": "brain-tumor-mri-4k", "epochs": 40, "accuracy": 0.98028477})
    assert app.training_details(config).splitlines() == [
        "- dataset: brain-tumor-mri-4k",
        "- epochs: 40",
        "- accuracy: 0.9803",
    ]
    released = BrainResNetConfig(training_info={"accuracy": 0.9278, "accuracy_cross_fitted": 0.9416, "seed": 42})
    assert app.training_details(released) == "- seed: 42"  # the headline shows 94.2% once
    assert app.training_details(BrainResNetConfig()) == ""


def test_model_status_gives_the_held_out_figure_once():
    released = app.model_status(BrainResNetConfig(training_info={"accuracy": 0.9278, "accuracy_cross_fitted": 0.9416}))
    assert released.startswith("**94.2% of held-out slices of its training sources classified correctly**")
    assert "(its calibration fitted on other held-out slices" in released  # no operating point to name
    assert "0.9278" not in released and "accuracy" not in released.split("Model: trained")[1]  # one figure shown
    point = {"healthy_false_alarms": 0.05, "notumor_logit_offset": 1.28}
    info = {"accuracy_cross_fitted": 0.9416, "operating_point": point}
    shifted = app.model_status(BrainResNetConfig(training_info=info))
    assert "(its tumor threshold and calibration fitted on other held-out slices" in shifted
    spread = app.model_status(
        BrainResNetConfig(training_info=info | {"accuracy_cross_fitted_interval": [0.9131, 0.9624]})
    )
    assert "classified correctly** (95% interval 91.3%–96.2%, one patient's similar slices counted once;" in spread
    assert "0.9131" not in spread  # the interval is shown once, as percentages
    recipe = {"folds": 5, "accuracy": 0.9244, "interval": [0.9108, 0.9374], "device": "NVIDIA H200"}
    steadier = app.model_status(BrainResNetConfig(training_info=info | {"recipe_cross_validation": recipe}))
    assert "The same recipe over all 5 folds (trained on NVIDIA H200): **92.4%** (91.1%–93.7%)" in steadier
    assert "recipe_cross_validation" not in steadier  # shown once, in words, not among the facts
    assert "94.2%" not in app.model_status(BrainResNetConfig(training_info={"accuracy": 0.9416}))


def test_release_model_analyses_an_example():
    if not (ROOT / "release" / "config.json").exists():
        pytest.skip("no bundled release/ in this checkout")
    analyser = app.SliceAnalyser(*app.load_model(app.DEFAULT_MODEL_ID))

    analysis = analyser.analyse(EXAMPLES[0])

    assert sorted(analysis.probabilities) == LABELS
    side = analyser.processor.size  # the size the release was trained at
    assert analysis.grad_cams.overlay().shape == (side, side, 3)


def test_colour_pictures_get_a_note_and_grayscale_slices_in_any_format_do_not(tmp_path):
    """Photos and colour maps are flagged; MRI slices are not, whether stored as L, RGB (Br35H), 16 bit or DICOM.
    The photo is also far from the model's training features: unfamiliar."""
    slices = [Image.open(path) for path in EXAMPLES]  # figshare slices are L, Br35H slices RGB
    assert {image.mode for image in slices} == {"L", "RGB"}
    brain = brain_like(256)
    grayscale = [*slices, Image.fromarray((brain * 65535).astype(np.uint16)), np.stack([brain] * 3, axis=-1)]
    assert [app.colour_note(image) for image in grayscale] == [None] * len(grayscale)

    photo = np.zeros((120, 160, 3), np.uint8)
    photo[..., 0], photo[..., 1] = np.linspace(0, 255, 160), 90  # a red-to-yellow gradient
    coloured = [Image.fromarray(photo), Image.fromarray(photo).convert("P"), photo.astype(np.uint16) * 257]
    assert [app.colour_note(image) for image in coloured] == [app.COLOUR_NOTE] * len(coloured)

    analyser = app.SliceAnalyser(*app.load_model(str(save_random_model(tmp_path / "model"))))
    photo_analysis = analyser.analyse(colour_photo(tmp_path / "photo.png"))
    assert photo_analysis.notes == [app.COLOUR_NOTE, app.UNFAMILIAR_NOTE] and photo_analysis.unfamiliarity > 1
    example_analysis = analyser.analyse(EXAMPLES[0])
    assert example_analysis.notes == [] and 0 < example_analysis.unfamiliarity < 1


def test_a_map_pruned_while_it_is_saved_again_is_written_anew(monkeypatch):
    """The Grad-CAM class control saves maps while an analysis prunes old ones: a map deleted between the check
    that it is there and the touch that keeps it is written again, not an error."""
    pngs, image = app.PngStore(), np.full((8, 8, 3), 7, np.uint8)
    path = Path(pngs.save(image))
    real_utime = os.utime

    def pruned_first(target, *args, **kwargs):
        Path(target).unlink()
        return real_utime(target, *args, **kwargs)

    monkeypatch.setattr(app.os, "utime", pruned_first)
    assert pngs.save(image) == str(path)
    with Image.open(path) as saved:
        assert np.asarray(saved).tolist() == image.tolist()


def test_prune_skips_what_vanishes_between_its_listing_and_its_check(monkeypatch):
    """Another request's prune, or a save renaming its staging file, may remove a listed file first."""
    pngs = app.PngStore(max_age_s=0)
    old = Path(pngs.save(np.zeros((8, 8, 3), np.uint8)))
    ghost = pngs.folder / "gone.png"
    listing = [ghost, old]
    monkeypatch.setattr(type(pngs.folder), "glob", lambda folder, pattern: iter(listing))
    monkeypatch.setattr(type(pngs.folder), "iterdir", lambda folder: iter(listing))

    pngs.prune()

    assert not old.exists()


def test_the_grad_cam_is_labelled_with_its_class_and_an_empty_one_says_so():
    """Another class's map is often all zeros; unlabelled, it looked like a control that did nothing."""
    view = np.full((8, 8), 100, dtype=np.uint8)
    maps = np.zeros((4, 8, 8), dtype=np.uint8)
    maps[0, 2:5, 2:5] = 255
    cams, labels = app.GradCams(view, maps, predicted=0), ["glioma", "meningioma", "notumor", "pituitary"]
    assert app.grad_cam_label(cams, labels) == "Grad-CAM: glioma (predicted)"
    assert app.grad_cam_label(cams, labels, "glioma") == "Grad-CAM: glioma (predicted)"
    assert app.grad_cam_label(cams, labels, "pituitary") == "Grad-CAM: pituitary, empty map"


def test_the_grad_cam_control_shows_the_chosen_classs_map():
    """Each class picked shows its own map, the first class's included; the default is the predicted class's."""
    view = np.full((8, 8), 100, dtype=np.uint8)
    maps = np.zeros((4, 8, 8), dtype=np.uint8)
    maps[0, :4], maps[2, 4:] = 255, 255
    cams = app.GradCams(view, maps, predicted=2)

    for index in range(4):
        np.testing.assert_array_equal(cams.overlay(index), app.heat_overlay(view, maps[index]))
    np.testing.assert_array_equal(cams.overlay(), app.heat_overlay(view, maps[2]))


def test_the_assessment_is_put_in_words_for_visitors():
    """Beside the probabilities the page says whether to trust the answer, every warning in full, the familiar case
    with its caveat; a model without a detector says so rather than nothing."""
    unfamiliar_photo = {"unfamiliar": True, "unfamiliarity": 3.2, "warnings": [app.COLOUR_NOTE, app.UNFAMILIAR_NOTE]}
    words = app.verdict(unfamiliar_photo)
    assert "**Not an MRI slice?** " + app.COLOUR_NOTE in words
    assert "**Unfamiliar image.** " + app.UNFAMILIAR_NOTE in words
    assert "Familiar image" not in words

    familiar = app.verdict({"unfamiliar": False, "unfamiliarity": 0.25, "warnings": []})
    assert familiar.startswith("**Familiar image**: unfamiliarity 0.25") and "no all-clear" in familiar
    assert "no unfamiliar-image check" in app.verdict({"unfamiliar": None, "unfamiliarity": None, "warnings": []})
    assert app.verdict(None) == ""


def test_probabilities_are_the_models_calibrated_ones(tmp_path):
    model, processor = app.load_model(str(save_random_model(tmp_path / "model")))
    analysis = app.SliceAnalyser(model, processor).analyse(EXAMPLES[0])
    with torch.no_grad():
        logits = model.classifier(model.brain_resnet(processor(Image.open(EXAMPLES[0]))["pixel_values"]).pooler_output)
    expected = torch.softmax(logits / 1.5, dim=1)[0].tolist()
    assert list(analysis.probabilities.values()) == pytest.approx(expected, abs=1e-5)
    # each probability under its own class's name, and the Grad-CAM first shown is the most probable class's
    names = [model.config.id2label[index] for index in range(len(expected))]
    assert analysis.probabilities == pytest.approx(dict(zip(names, expected, strict=True)), abs=1e-5)
    assert analysis.grad_cams.predicted == int(np.argmax(expected))
    honest = BrainResNetConfig(training_info={"epochs": 50}, calibration_temperature=0.62, familiarity_threshold=9.0)
    status = app.model_status(honest)
    assert "calibrated on held-out slices (temperature 0.62)" in status and "flagged as unfamiliar" in status
    assert "calibrated" not in app.model_status(BrainResNetConfig(training_info={"epochs": 50}))
    averaging = BrainResNetConfig(training_info={"epochs": 60}, mirror_average=True)
    assert "mirror image get one answer" in app.model_status(averaging)
    point = {"healthy_false_alarms": 0.03, "notumor_logit_offset": 1.64}
    status = app.model_status(BrainResNetConfig(training_info={"epochs": 60, "operating_point": point}))
    assert "threshold is set so that at most 3% of held-out healthy slices are called a tumor" in status


def test_a_model_without_multiscale_stem_or_se_still_gets_its_maps(tmp_path):
    config = BrainResNetConfig(stem_type="conv", attention_type="none")
    BrainResNetForImageClassification(config).save_pretrained(tmp_path)
    BrainResNetImageProcessor().save_pretrained(tmp_path)
    analyser = app.SliceAnalyser(*app.load_model(str(tmp_path)))

    analysis = analyser.analyse(EXAMPLES[0])

    assert analysis.se_plot is None and analysis.stem_maps == []
    assert analysis.unfamiliarity is None and analysis.notes == []  # no detector: no warning, no error
    assert [caption for _, caption in analysis.stage_maps][0] == "stage 1 · 64 ch · no SE: mean"
    assert analysis.grad_cams.maps.shape == (4, 224, 224)


def test_space_refuses_to_start_without_a_model(tmp_path):
    env = {**os.environ, "MODEL_ID": str(tmp_path / "missing"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(SPACE_DIR / "app.py")], env=env, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 1
    assert f"Cannot load the model MODEL_ID='{tmp_path / 'missing'}'" in result.stderr
    assert "Traceback" not in result.stderr


# --- bad uploads: each gets its own message through the API, and the server keeps serving -------------------------


def non_image(folder: Path) -> Path:
    path = folder / "notes.txt"
    path.write_text("These are notes, not an MRI slice.\n")
    return path


def truncated_jpeg(folder: Path) -> Path:
    path = folder / "truncated.jpg"
    path.write_bytes(EXAMPLES[0].read_bytes()[:3000])
    return path


def empty_file(folder: Path) -> Path:
    path = folder / "empty.png"
    path.touch()
    return path


def decompression_bomb(folder: Path) -> Path:
    path = folder / "bomb.png"  # 100 megapixels of one colour: a few kilobytes on disk, 100 MB and more decoded
    Image.new("1", (10_000, 10_000)).save(path)
    return path


def too_many_pixels(folder: Path) -> Path:
    path = folder / "huge.png"  # over the Space's 25-megapixel limit, under PIL's own bomb error
    Image.new("1", (6_000, 6_000)).save(path)
    return path


def one_pixel(folder: Path) -> Path:
    path = folder / "dot.png"
    Image.new("L", (1, 1), 128).save(path)
    return path


def animated_gif(folder: Path) -> Path:
    path = folder / "animated.gif"
    frames = [Image.new("L", (64, 64), shade) for shade in (0, 128, 255)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def dicom_without_pixels(folder: Path) -> Path:
    return write_dicom(folder / "report.dcm", None, SOPClassUID=BasicTextSRStorage, Modality="SR")


def not_really_dicom(folder: Path) -> Path:
    path = folder / "scan.dcm"
    path.write_bytes(b"\x00" * 64 + b"this is no DICOM file")
    return path


def truncated_dicom(folder: Path) -> Path:
    path = folder / "cut.dcm"  # cut off in its header, before the image's size and pixels
    path.write_bytes(write_dicom(folder / "whole.dcm", brain_like() * 1000).read_bytes()[:400])
    return path


BAD_UPLOADS: list[tuple[Callable[[Path], Path], str]] = [
    (non_image, r"not an image the Space can read: upload a JPEG, PNG, WebP, BMP or TIFF"),
    (truncated_jpeg, r"truncated or corrupt"),
    (empty_file, r"The file is empty \(0 bytes\)"),
    (decompression_bomb, r"decompression bomb"),
    (too_many_pixels, r"too large: 6000×6000 pixels .*decompression bombs"),
    (one_pixel, r"only 1×1 pixels; a slice needs at least 32×32"),
    (animated_gif, r"holds 3 frames \(an animation"),
    (dicom_without_pixels, r"DICOM file holds no pixel data"),
    (not_really_dicom, r"named like DICOM but is not a DICOM file \(it has no DICOM header\)"),
    (truncated_dicom, r"ends before its pixel data: it is truncated"),
]


@pytest.mark.parametrize(("make_file", "message"), BAD_UPLOADS, ids=[make.__name__ for make, _ in BAD_UPLOADS])
def test_bad_upload_gets_a_clear_message_and_the_server_keeps_serving(client, space, tmp_path, make_file, message):
    with pytest.raises(AppError, match=message) as raised:
        predict(client, make_file(tmp_path))

    assert "Traceback" not in str(raised.value)
    assert_full_answer(predict(client, EXAMPLES[0]))
    assert "Traceback" not in space["log"].read_text()


def test_upload_over_the_size_limit_is_refused_with_its_reason(client, space, tmp_path):
    path = tmp_path / "oversized.png"
    with path.open("wb") as file:
        file.truncate(app.MAX_UPLOAD_BYTES + 1)

    with pytest.raises(ValueError, match=r"exceeds the maximum file size"):
        predict(client, path)
    # The server enforces the limit itself, whatever the client checks.
    with path.open("rb") as file:
        response = httpx.post(f"{space['url']}gradio_api/upload", files={"files": file}, timeout=60)
    assert response.status_code == 413 and "maximum allowed size" in response.text
    assert_full_answer(predict(client, EXAMPLES[0]))


# --- the API --------------------------------------------------------------------------------------------------------


def test_predict_is_the_one_public_endpoint_taking_one_image(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]

    assert list(endpoints) == ["/predict"]
    assert len(endpoints["/predict"]["parameters"]) == 1
    assert len(endpoints["/predict"]["returns"]) == 6


def test_predict_returns_probabilities_and_every_map(client):
    answer = predict(client, EXAMPLES[0])
    assert_full_answer(answer)
    assert answer[1]["unfamiliar"] is False and answer[1]["warnings"] == []


def test_api_says_when_an_upload_is_unfamiliar(client, tmp_path):
    answer = predict(client, colour_photo(tmp_path / "photo.png"))
    assert_full_answer(answer)
    assert answer[1]["unfamiliar"] is True and answer[1]["warnings"] == [app.COLOUR_NOTE, app.UNFAMILIAR_NOTE]


def test_a_dicom_slice_without_file_extension_is_analysed(client, tmp_path):
    pixels = (brain_like() * 3000).astype(np.uint16)
    path = write_dicom(tmp_path / "IM0001", pixels, WindowCenter=1500, WindowWidth=3000)

    assert_full_answer(predict(client, path))


def test_fifty_concurrent_requests_are_all_answered_each_with_its_own_result(client):
    expected = {path: confidences(predict(client, path)) for path in EXAMPLES[:4]}
    paths = [EXAMPLES[index % 4] for index in range(50)]

    jobs = [client.submit(handle_file(str(path)), api_name="/predict") for path in paths]
    answers = [job.result(timeout=300) for job in jobs]

    assert len(answers) == 50
    for path, answer in zip(paths, answers, strict=True):
        assert_full_answer(answer)
        assert confidences(answer) == pytest.approx(expected[path], abs=1e-5)
