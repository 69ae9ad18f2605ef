"""evaluation.py: the corruptions and source re-renderings, the shortcut arithmetic, and both commands end to end on a
tiny 2-fold train.py run over 40 real slices (CPU, seconds)."""

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from test_train import CLASSES, TINY_CONFIG

import evaluation
from brain_resnet import data
from brain_resnet.external import external_files
from brain_resnet.modeling import BrainResNetImageProcessor
from brain_resnet.reports import summary_markdown

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory, brain_mri_data) -> Path:
    """A finished `train.py` run: 2 folds of a tiny network, 1 epoch at 64 px, on 10 slices per class."""
    work = tmp_path_factory.mktemp("evaluation")
    src = work / "src"
    for name in CLASSES:
        files = sorted((brain_mri_data / name).iterdir())
        (src / name).mkdir(parents=True)
        for file in files[:: len(files) // 10][:10]:
            shutil.copy(file, src / name / file.name)
    (work / "tiny.json").write_text(json.dumps(TINY_CONFIG))
    commands = [
        ["prepare_dataset.py", str(src), str(work / "dataset"), "--folds", "2"],
        ["train.py", "--dataset", str(work / "dataset"), "--output-dir", str(work / "run"), "--folds", "all"]
        + ["--epochs", "1", "--image-size", "64", "--batch-size", "8", "--model", str(work / "tiny.json")],
    ]
    for command in commands:
        done = subprocess.run([sys.executable, *command], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
    return work / "run"


@pytest.fixture
def slice_image(brain_mri_data) -> Image.Image:
    return Image.open(sorted((brain_mri_data / "glioma").iterdir())[0]).copy()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.float64)


# ---------------------------------------------------------------- alterations
def test_every_corruption_is_seeded_and_grows_with_its_strength(slice_image):
    original = pixels(slice_image)
    for name, strengths in evaluation.CORRUPTIONS.items():
        errors = []
        for strength in strengths:
            first = evaluation.corrupt(slice_image, name, strength, np.random.default_rng(1))
            again = evaluation.corrupt(slice_image, name, strength, np.random.default_rng(1))
            assert np.array_equal(pixels(first), pixels(again)), name
            if name == "downscale":
                assert first.size == tuple(round(side * strength) for side in slice_image.size)
                first = first.resize(slice_image.size, Image.BILINEAR)
            else:
                assert first.size == slice_image.size, name
            errors.append(np.abs(pixels(first) - original).mean())
        assert min(errors) > 0.2, f"{name} leaves the slice (almost) unchanged: {errors}"
        if name != "contrast":  # contrast goes down, then up: its strengths are not ordered by effect
            assert errors == sorted(errors), f"{name}: stronger is not further from the original: {errors}"


def test_corruptions_accept_16_bit_and_palette_slices(slice_image):
    deep = Image.fromarray(pixels(slice_image).astype(np.uint16) * 257)
    palette = slice_image.convert("P")
    for image in (deep, palette):
        for name in evaluation.CORRUPTIONS:
            assert evaluation.corrupt(image, name, evaluation.CORRUPTIONS[name][0], np.random.default_rng(0)).mode in (
                "L",
                "RGB",
            )


def test_as_br35h_gives_the_notumor_sources_look(slice_image):
    rendered = evaluation.as_br35h(slice_image, (300, 168), np.random.default_rng(3))
    assert rendered.mode == "RGB" and rendered.size == (300, 168)
    assert evaluation.as_br35h(slice_image, (300, 168), np.random.default_rng(3)).tobytes() == rendered.tobytes()
    shown = pixels(rendered)
    assert shown.max() > 100, "the brain must still be visible"


def test_decoding_processes_give_what_one_process_gives_and_name_a_broken_row(brain_mri_data):
    """Robustness decodes every test's slices in several processes, each altered by a per-row closure: the caches
    must be the ones a single decoder makes, in row order, and a damaged slice must be named, not a pool's crash."""
    files = sorted((brain_mri_data / "glioma").iterdir())[:70] + sorted((brain_mri_data / "notumor").iterdir())[:70]
    images = [{"bytes": file.read_bytes(), "path": file.name} for file in files]
    processor = BrainResNetImageProcessor()
    rows = np.arange(len(images))[::-1]  # a closure over the caller's rows, as evaluation.decoded makes

    def alter(i, image):
        return image.rotate(int(rows[i]) % 30)

    alone = data.decode_images(images, processor, [32, 48], 1, alter)
    together = data.decode_images(images, processor, [32, 48], 2, alter)
    assert [cache.shape for cache in together] == [(140, 1, 32, 32), (140, 1, 48, 48)]
    assert all(torch.equal(a, b) for a, b in zip(alone, together, strict=True))
    assert not torch.equal(together[0][0], data.decode_images(images[:1], processor, [32], 1)[0][0])  # altered
    images[100] = {"bytes": b"not a jpeg", "path": "broken.jpg"}
    with pytest.raises(data.UsageError, match="row 100 of the dataset is not a readable image"):
        data.decode_images(images, processor, [32], 2)


def test_as_figshare_gives_a_square_grayscale_256_px_slice():
    wide = Image.new("RGB", (300, 168))
    wide.paste((200, 200, 200), (100, 30, 200, 140))
    rendered = evaluation.as_figshare(wide, np.random.default_rng(0))
    assert rendered.mode == "L" and rendered.size == (256, 256)
    assert pixels(rendered)[128, 128] > 150  # the content is kept, scaled into the square


def test_reframe_crops_tighter_and_pads_looser(slice_image):
    rng = np.random.default_rng(0)
    assert evaluation.reframe(slice_image, 0.8, rng).size == tuple(round(s * 0.8) for s in slice_image.size)
    looser = evaluation.reframe(slice_image, 1.25, rng)
    assert looser.size == tuple(round(s * 1.25) for s in slice_image.size)
    assert pixels(looser).sum() == pytest.approx(pixels(slice_image).sum())  # a border of black, nothing lost


# ---------------------------------------------------------------- the shortcut arithmetic
def test_shortcut_rates_known_answer():
    notumor = 2
    clean = np.array([0, 2, 1, 3, 2, 2, 0])
    altered = np.array([2, 2, 1, 2, 2, 0, 0])
    tumor = evaluation.shortcut_rates(clean, altered, notumor, [0, 1, 2, 3], to_notumor=True)
    # slice 1 was already called notumor; of the other three, slices 0 and 3 flip
    assert tumor == {
        "slices": 4,
        "called_notumor_clean": 0.25,
        "called_notumor_altered": 0.75,
        "flip_rate": pytest.approx(2 / 3),
    }
    healthy = evaluation.shortcut_rates(clean, altered, notumor, [4, 5, 6], to_notumor=False)
    # slice 6 was already called a tumor; of the other two, slice 5 flips
    assert healthy == {
        "slices": 3,
        "called_tumor_clean": pytest.approx(1 / 3),
        "called_tumor_altered": pytest.approx(2 / 3),
        "flip_rate": 0.5,
    }
    everything_notumor = evaluation.shortcut_rates(np.full(3, 2), np.full(3, 2), notumor, [0, 1, 2], to_notumor=True)
    assert everything_notumor["flip_rate"] is None  # nothing could flip: no rate, rather than a perfect 0


# ---------------------------------------------------------------- robustness, end to end
@pytest.fixture(scope="module")
def robustness_result(run, tmp_path_factory) -> tuple[dict, Path]:
    output = tmp_path_factory.mktemp("robustness") / "robustness.json"
    code = evaluation.main(
        ["robustness", str(run), "--only", "jpeg,rotation,tumor_as_br35h,notumor_as_figshare", "--output", str(output)]
    )
    assert code == 0
    return json.loads(output.read_text()), output


def test_clean_rescoring_reproduces_the_accuracy_train_py_recorded(run, robustness_result):
    result, _ = robustness_result
    recorded = json.loads((run / "cv_results.json").read_text())["folds"]
    entry = result["runs"][str(run)]
    assert entry["folds"] == [0, 1]
    assert entry["clean"]["accuracy"]["folds"] == pytest.approx([recorded[k]["accuracy"] for k in ("0", "1")])


def test_robustness_reports_each_strength_and_the_shortcut_tests(run, robustness_result):
    result, output = robustness_result
    entry = result["runs"][str(run)]
    assert list(entry["corruptions"]) == ["jpeg", "rotation"]
    assert [p["strength"] for p in entry["corruptions"]["jpeg"]] == list(evaluation.CORRUPTIONS["jpeg"])
    for points in entry["corruptions"].values():
        for point in points:
            assert 0 <= point["accuracy"]["mean"] <= 1 and len(point["accuracy"]["folds"]) == 2
    tumor = entry["shortcut"]["tumor_as_br35h"]
    assert tumor["slices"] == 30 and 0 <= tumor["flip_rate"] <= 1
    assert entry["shortcut"]["notumor_as_figshare"]["slices"] == 10
    assert entry["shortcut_flip_rate"] == tumor["flip_rate"]
    assert entry["model"].endswith("tiny.json") and entry["protocol"] == "grouped"
    assert result["device"] == "cpu" and result["command"].startswith("python ")
    assert output.with_suffix(".png").stat().st_size > 10_000


def test_a_robustness_run_stopped_midway_keeps_the_tests_it_finished_shortcut_tests_first(
    run, robustness_result, tmp_path, monkeypatch, capsys
):
    """A GPU lease's time limit stops the run (the eighth lease's after 7 of 24 tests, every score lost): the JSON
    holds what finished, marked partial, with the stress tests the summary reads among the first; a finished run's
    JSON is not marked."""
    assert "partial" not in robustness_result[0]
    decoded, calls = evaluation.decoded, []

    def stopped_at_the_fourth(*args):
        calls.append(args)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return decoded(*args)

    monkeypatch.setattr(evaluation, "decoded", stopped_at_the_fourth)
    output = tmp_path / "robustness.json"
    with pytest.raises(KeyboardInterrupt):
        evaluation.main(
            ["robustness", str(run), "--views", "0", "--only", "jpeg,tumor_as_br35h,notumor_as_figshare"]
            + ["--output", str(output)]
        )
    kept = json.loads(output.read_text())
    assert kept["partial"] == {"tests_done": 3, "tests": 6}
    entry = kept["runs"][str(run)]
    assert set(entry["shortcut"]) == {"tumor_as_br35h", "notumor_as_figshare"} and entry["corruptions"] == {}
    assert entry["shortcut"] == robustness_result[0]["runs"][str(run)]["shortcut"]
    capsys.readouterr()
    assert evaluation.main(["summary", str(run), "--robustness", str(output)]) == 0
    assert f"note: {output} holds the first 3 of its 6 tests" in capsys.readouterr().err


def test_robustness_scores_clean_slices_with_test_time_views_beside_the_single_view_accuracy(run, robustness_result):
    result, _ = robustness_result
    entry = result["runs"][str(run)]
    assert result["views"] == entry["views"] == 16
    with_views = entry["clean"]["accuracy_with_views"]
    assert len(with_views["folds"]) == 2 and all(0 <= accuracy <= 1 for accuracy in with_views["folds"])
    assert "accuracy_with_views" not in entry["corruptions"]  # the clean slices only


def test_robustness_without_views_reports_none_and_the_summary_none_either(run, tmp_path):
    output = tmp_path / "robustness.json"
    assert evaluation.main(["robustness", str(run), "--only", "jpeg", "--views", "0", "--output", str(output)]) == 0
    assert "accuracy_with_views" not in json.loads(output.read_text())["runs"][str(run)]["clean"]
    (entry,) = evaluation.summarize_runs([run], [output])["protocols"]["grouped"].values()
    assert "accuracy_with_views_mean" not in entry and "views" not in entry


def test_summary_averages_views_over_every_fold_scored_and_refuses_mixed_numbers_of_views():
    """A run continued on a second machine: each machine's robustness file scored the fold models it had."""

    def scored(views: int, folds: list[float]) -> dict:
        return {"views": views, "clean": {"accuracy_with_views": {"folds": folds}}}

    assert evaluation.accuracy_with_views([scored(16, [0.9]), scored(16, [0.8, 0.7]), {"clean": {}}]) == {
        "views": 16,
        "accuracy_with_views_mean": pytest.approx(0.8),
        "accuracy_with_views_std": pytest.approx(0.1),
    }
    with pytest.raises(evaluation.UsageError, match="different numbers of views"):
        evaluation.accuracy_with_views([scored(16, [0.9]), scored(8, [0.8])])


def mean_logits(pixel_values: torch.Tensor) -> torch.Tensor:
    mean = pixel_values.mean(dim=(1, 2, 3))
    return torch.stack([mean, -mean], dim=1)


class SeenInputs(torch.nn.Module):
    """A stand-in classifier: its logits are each input's mean and minus it, and it keeps every batch it saw."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, pixel_values):
        self.seen.append(pixel_values)
        return SimpleNamespace(logits=mean_logits(pixel_values))


def test_views_are_seeded_training_views_of_each_slice_averaged_with_it(slice_image):
    """The slice's own probabilities count once and each of N views once; the views are random crops of the margin
    cache at the model's size, the same for the same seed."""
    processor = BrainResNetImageProcessor(size=32)
    margin = torch.from_numpy(np.array(slice_image.convert("L").resize((37, 37)))).expand(3, 1, 37, 37).contiguous()
    plain = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    model = SeenInputs()
    cpu = torch.device("cpu")

    averaged = evaluation.average_with_views(plain, model, margin, processor, cpu, 2, views=3, seed=0)

    views = torch.cat(model.seen)
    assert views.shape == (9, 1, 32, 32)  # 3 views of 3 slices, in batches of 2
    assert not torch.equal(views[0], views[3])  # each view of a slice is drawn anew
    by_view = torch.softmax(mean_logits(views), dim=1).view(3, 3, 2)  # (view, slice, class)
    torch.testing.assert_close(averaged, (plain + by_view.sum(0)) / 4)
    model.seen.clear()
    torch.testing.assert_close(evaluation.average_with_views(plain, model, margin, processor, cpu, 2, 3, 0), averaged)
    assert not torch.equal(evaluation.average_with_views(plain, model, margin, processor, cpu, 2, 3, 1), averaged)
    assert torch.equal(evaluation.average_with_views(plain, model, margin, processor, cpu, 2, 0, 0), plain)


def test_robustness_of_a_one_fold_run_decodes_only_that_fold(run, robustness_result, tmp_path, capsys):
    """Each condition decodes the held-out slices alone (a fifth of the dataset for one of five folds), with the
    same scores as when every fold is evaluated."""
    one_fold = tmp_path / "run"
    shutil.copytree(run, one_fold, ignore=shutil.ignore_patterns("fold-1"))
    output = tmp_path / "robustness.json"
    assert evaluation.main(["robustness", str(one_fold), "--only", "jpeg", "--output", str(output)]) == 0
    held_out = json.loads((run / "cv_results.json").read_text())["folds"]["0"]["num_eval"]
    assert f"clean: {held_out:,} slices" in capsys.readouterr().out
    both_folds, _ = robustness_result
    alone = json.loads(output.read_text())["runs"][str(one_fold)]["corruptions"]["jpeg"]
    beside = both_folds["runs"][str(run)]["corruptions"]["jpeg"]
    assert [entry["accuracy"]["folds"][0] for entry in alone] == [entry["accuracy"]["folds"][0] for entry in beside]


def test_robustness_rejects_what_is_not_a_run(tmp_path, capsys):
    assert evaluation.main(["robustness", str(tmp_path)]) == 2
    assert "not a train.py run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        evaluation.main(["robustness", str(tmp_path), "--only", "snow"])
    assert stop.value.code == 2
    assert "unknown test 'snow'" in capsys.readouterr().err


# ---------------------------------------------------------------- external data
@pytest.fixture
def external_folder(tmp_path, brain_mri_data) -> Path:
    folder = tmp_path / "external"
    for name, source in (("glioma", "glioma"), ("tumor", "pituitary"), ("notumor", "notumor")):
        (folder / name).mkdir(parents=True)
        for file in sorted((brain_mri_data / source).iterdir())[:3]:
            shutil.copy(file, folder / name / file.name)
    (folder / "glioma" / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notumor" / "notes.txt").write_text("ignored: not an image file")
    return folder


def test_external_scores_named_classes_tumor_folders_and_skips_broken_files(run, external_folder, tmp_path, capsys):
    output = tmp_path / "external.json"
    model = run / "fold-0"
    assert evaluation.main(["external", str(external_folder), "--model", str(model), "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert len(result["skipped"]) == 1 and "broken.jpg" in result["skipped"][0]
    assert "broken.jpg" in capsys.readouterr().err
    metrics = result["models"][str(model)]
    predictions = metrics["predictions"]
    assert metrics["slices"] == len(predictions) == 9
    by_folder = {name: [p["predicted"] for p in predictions if p["truth"] == name] for name in ("glioma", "tumor")}
    tumor_calls = by_folder["glioma"] + by_folder["tumor"]
    assert metrics["tumor_found"] == pytest.approx(np.mean([p != "notumor" for p in tumor_calls]))
    healthy = [p["predicted"] for p in predictions if p["truth"] == "notumor"]
    assert metrics["notumor_specificity"] == pytest.approx(np.mean([p == "notumor" for p in healthy]))
    named = [p for p in predictions if p["truth"] != "tumor"]
    assert metrics["accuracy"] == pytest.approx(np.mean([p["predicted"] == p["truth"] for p in named]))


def test_external_leaves_out_copies_of_the_training_data_even_mirrored(run, external_folder, tmp_path, capsys):
    """A folder that re-publishes training slices (here the first slice of each class, one of them mirrored and
    re-encoded) would flatter the models: those slices are left out of the scores and listed with the training
    slice they copy; the summary counts them among the copies left out."""
    dataset = str(run.parent / "dataset")
    trained = {Path(file).name for file in data.read_splits(dataset)[0]["train"]["file"]}
    copied = sorted(p for p in external_folder.rglob("*.jpg") if p.name in trained)
    assert len(copied) == 3  # glioma, pituitary (in the tumor folder) and notumor: each class's first slice
    mirrored = copied[0]
    Image.open(mirrored).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored.with_name("mirrored.jpg"), quality=80)
    mirrored.unlink()
    output = tmp_path / "external.json"
    model = str(run / "fold-0")
    command = ["external", str(external_folder), "--model", model, "--output", str(output)]
    assert evaluation.main([*command, "--leave-out-copies-of", dataset]) == 0
    result = json.loads(output.read_text())
    left_out = {entry["file"]: entry["copy_of"] for entry in result["copies_left_out"]["slices"]}
    assert {f"{p.parent.name}/{p.name}" for p in copied[1:]} | {f"{mirrored.parent.name}/mirrored.jpg"} <= set(left_out)
    assert all(Path(copy_of).name in trained for copy_of in left_out.values())
    assert f"left out {len(left_out)} of 9 slices" in capsys.readouterr().err
    scored = result["models"][model]
    assert scored["slices"] == 9 - len(left_out) == len(scored["predictions"]) > 0
    assert not {p["file"] for p in scored["predictions"]} & set(left_out)
    scores = evaluation.read_external_reports([output])
    assert scores[str(Path(model).resolve())][2] == set(left_out)


def test_external_rejects_folders_that_are_not_classes(run, tmp_path, capsys):
    (tmp_path / "data" / "maybe").mkdir(parents=True)
    Image.new("L", (64, 64)).save(tmp_path / "data" / "maybe" / "a.png")
    assert evaluation.main(["external", str(tmp_path / "data"), "--model", str(run / "fold-0")]) == 2
    error = capsys.readouterr().err
    assert "'maybe' is not a class" in error and "glioma, meningioma, notumor, pituitary, tumor" in error


def test_external_understands_the_folder_names_of_public_sets(run, tmp_path, brain_mri_data):
    """Br35H's yes/no and Kaggle's *_tumor/no_tumor trees evaluate as they are downloaded."""
    folder = tmp_path / "data"
    for name, source in (
        ("yes", "glioma"),
        ("no", "notumor"),
        ("Pituitary_Tumor", "pituitary"),
        ("no_tumor", "notumor"),
    ):
        (folder / name).mkdir(parents=True)
        shutil.copy(sorted((brain_mri_data / source).iterdir())[0], folder / name / "slice.jpg")
    hidden_folders = (folder / ".ipynb_checkpoints", folder / "no" / ".ipynb_checkpoints", folder / "__MACOSX")
    for hidden in hidden_folders:  # a notebook's and an unzipped macOS archive's, skipped
        hidden.mkdir()
        shutil.copy(folder / "no" / "slice.jpg", hidden / "slice-checkpoint.jpg")
    output = tmp_path / "external.json"
    assert evaluation.main(["external", str(folder), "--model", str(run / "fold-0"), "--output", str(output)]) == 0
    predictions = json.loads(output.read_text())["models"][str(run / "fold-0")]["predictions"]
    truth = {p["file"].split("/")[0]: p["truth"] for p in predictions}
    assert truth == {"yes": "tumor", "no": "notumor", "Pituitary_Tumor": "pituitary", "no_tumor": "notumor"}
    assert len(predictions) == 4


def test_external_reads_what_the_space_accepts(run, tmp_path):
    """A 16-bit PNG and an RGB WebP are external slices like any other."""
    folder = tmp_path / "data"
    (folder / "notumor").mkdir(parents=True)
    gray = (np.linspace(0, 65535, 96 * 96).reshape(96, 96)).astype(np.uint16)
    Image.fromarray(gray).save(folder / "notumor" / "deep.png")
    buffer = io.BytesIO()
    Image.new("RGB", (80, 60), (90, 90, 90)).save(buffer, format="WEBP")
    (folder / "notumor" / "colour.webp").write_bytes(buffer.getvalue())
    output = tmp_path / "external.json"
    assert evaluation.main(["external", str(folder), "--model", str(run / "fold-0"), "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["skipped"] == [] and result["models"][str(run / "fold-0")]["slices"] == 2


# ---------------------------------------------------------------- summary
def test_summary_gathers_runs_by_protocol_and_variant(run, robustness_result, tmp_path):
    _, robustness_file = robustness_result
    output = tmp_path / "summary.json"
    assert evaluation.main(["summary", str(run), "--robustness", str(robustness_file), "--output", str(output)]) == 0
    summary = json.loads(output.read_text())
    recorded = json.loads((run / "cv_results.json").read_text())
    entry = summary["protocols"]["grouped"]["tiny"]
    accuracies = [fold["accuracy"] for fold in recorded["folds"].values()]
    assert entry["accuracy_mean"] == pytest.approx(np.mean(accuracies))
    assert entry["accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))
    assert entry["params"] == recorded["params"] and entry["folds"] == 2 and entry["seeds"] == [42]
    assert 0 < entry["forward_gflops"] < 1 and entry["train_images_per_s"] > 0
    assert set(entry["recall"]) == set(CLASSES)
    measured = json.loads(robustness_file.read_text())["runs"][str(run)]
    assert entry["shortcut_flip_rate"] == measured["shortcut_flip_rate"]
    assert entry["views"] == 16
    assert entry["accuracy_with_views_mean"] == pytest.approx(
        np.mean(measured["clean"]["accuracy_with_views"]["folds"])
    )
    assert summary["device"] == "cpu"


def test_summary_weighs_each_machines_flip_rate_by_the_folds_it_measured(run, robustness_result, tmp_path):
    """A matrix continued on a second machine: each machine measured the fold models it had."""
    _, robustness_file = robustness_result
    files = []
    for name, folds, rate in (("first", [0], 0.0), ("second", [1, 2, 3], 0.4)):
        report = json.loads(robustness_file.read_text())
        report["runs"][str(run)] |= {"folds": folds, "shortcut_flip_rate": rate}
        files += ["--robustness", str(tmp_path / f"{name}.json")]
        (tmp_path / f"{name}.json").write_text(json.dumps(report))
    output = tmp_path / "summary.json"
    assert evaluation.main(["summary", str(run), *files, "--output", str(output)]) == 0
    assert json.loads(output.read_text())["protocols"]["grouped"]["tiny"]["shortcut_flip_rate"] == pytest.approx(0.3)


def test_summary_notes_a_robustness_file_that_scored_none_of_its_runs(run, robustness_result, tmp_path, capsys):
    """Runs moved since their robustness file was made (a lease's runs unpacked elsewhere) would silently lose
    their flip rates and accuracy with views: the summary says so."""
    _, robustness_file = robustness_result
    moved = shutil.copytree(run, tmp_path / "moved", ignore=shutil.ignore_patterns("fold-*"))
    (entry,) = evaluation.summarize_runs([moved], [robustness_file])["protocols"]["grouped"].values()
    assert "shortcut_flip_rate" not in entry
    assert f"note: {robustness_file} scored none of these runs (it names {run})" in capsys.readouterr().err
    evaluation.summarize_runs([run], [robustness_file])
    assert "note" not in capsys.readouterr().err


def test_summary_pairs_each_variant_with_the_improved_model_fold_by_fold(run, tmp_path, capsys):
    """Two variants of one protocol on the same folds: their accuracy differences pair up by fold."""
    runs = []
    for name, model, accuracies in (("improved", "improved", [0.9, 0.8]), ("other", None, [0.85, 0.8])):
        copy = shutil.copytree(run, tmp_path / name)
        results = json.loads((copy / "cv_results.json").read_text())
        results["args"]["settings"]["model"] = model or results["args"]["settings"]["model"]
        for fold, accuracy in zip(sorted(results["folds"]), accuracies, strict=True):
            results["folds"][fold]["accuracy"] = accuracy
        (copy / "cv_results.json").write_text(json.dumps(results))
        runs.append(str(copy))
    output = tmp_path / "summary.json"
    assert evaluation.main(["summary", *runs, "--output", str(output)]) == 0
    variants = json.loads(output.read_text())["protocols"]["grouped"]
    assert "paired_with_improved" not in variants["improved"]
    paired = variants["tiny"]["paired_with_improved"]
    assert paired["folds"] == 2 and paired["improved_ahead"] == 1 and paired["ties"] == 1
    assert paired["improved_minus_this_mean"] == pytest.approx(0.025)
    # corrected resampled t-test: t = mean / (std * sqrt(1/n + test/train)), n - 1 degrees of freedom
    fold = json.loads((Path(runs[0]) / "cv_results.json").read_text())["folds"]["0"]
    spread = 0.05 / np.sqrt(2) * np.sqrt(1 / 2 + fold["num_eval"] / fold["num_train"])
    assert paired["p_value"] == pytest.approx(2 * stats.t.sf(0.025 / spread, df=1))
    assert paired["p_value"] > 0.05  # two folds that disagree prove nothing
    assert "improved minus tiny, fold by fold over 2 folds: +2.50" in capsys.readouterr().out
    card = summary_markdown(json.loads(output.read_text()), "summary.json")  # the release card's section
    assert f"| grouped | tiny | 2 | +2.50 points | 3.54 | 1 | 1 | {paired['p_value']:.2f} |" in card


def unseen_slices(folder: Path, brain_mri_data: Path) -> Path:
    """Slices of every class that the `run` fixture did not train on (it took every tenth file of a class,
    from the first), in class folders."""
    for name in CLASSES:
        (folder / name).mkdir(parents=True)
        for file in sorted((brain_mri_data / name).iterdir())[1:3]:
            shutil.copy(file, folder / name / file.name)
    return folder


def test_summary_reports_cross_source_scores_of_the_fold_models(run, brain_mri_data, tmp_path):
    scored = tmp_path / "external.json"
    models = [arg for fold in ("fold-0", "fold-1") for arg in ("--model", str(run / fold))]
    external = unseen_slices(tmp_path / "external", brain_mri_data)
    assert evaluation.main(["external", str(external), *models, "--output", str(scored)]) == 0
    output = tmp_path / "summary.json"
    assert evaluation.main(["summary", str(run), "--external", str(scored), "--output", str(output)]) == 0

    per_model = json.loads(scored.read_text())["models"].values()
    cross_source = json.loads(output.read_text())["protocols"]["grouped"]["tiny"]["cross_source"]["external"]
    assert cross_source["models"] == 2
    for name in ("accuracy", "tumor_found", "notumor_specificity"):
        assert cross_source[name] == pytest.approx(np.mean([metrics[name] for metrics in per_model]))
    assert evaluation.main(["summary", str(run), "--external", str(output)]) == 2  # a summary is no external output


def test_summary_refuses_cross_source_scores_of_slices_a_run_trained_on(run, brain_mri_data, tmp_path, capsys):
    """A model scored on a folder holding slices it trained on (a run on every source, scored on one of them) has
    no score of another source: the summary says so instead of calling it cross-source."""
    external = unseen_slices(tmp_path / "external", brain_mri_data)
    seen = sorted((brain_mri_data / "glioma").iterdir())[0]  # the first glioma slice: in the run's training rows
    shutil.copy(seen, external / "glioma" / seen.name)
    scored, output = tmp_path / "external.json", tmp_path / "summary.json"
    models = [arg for fold in ("fold-0", "fold-1") for arg in ("--model", str(run / fold))]
    assert evaluation.main(["external", str(external), *models, "--output", str(scored)]) == 0
    capsys.readouterr()

    assert evaluation.main(["summary", str(run), "--external", str(scored), "--output", str(output)]) == 2
    error = capsys.readouterr().err
    assert f"trained on 1 of the 9 slices of external it was scored on (glioma/{seen.name}" in error
    assert "not cross-source" in error and not output.exists()


def test_a_cross_source_score_no_model_had_slices_for_is_left_empty(tmp_path):
    """A folder of tumor slices of unknown type has no 4-class accuracy and no healthy slices: None, not NaN
    (which is no JSON)."""
    fold = str((tmp_path / "run" / "fold-0").resolve())
    scored = {"accuracy": None, "tumor_found": 0.9, "notumor_specificity": None}
    run = (tmp_path / "run", {"folds": {"0": {}}})
    means = evaluation.cross_source_scores([run], {fold: ("tumors", scored, set())})
    assert means == {"tumors": {"models": 1, "copies_left_out": 0, **scored}}


def test_cross_source_scores_count_only_the_fold_models_of_finished_folds(tmp_path):
    """A fold model scored before its fold finished (a stopped matrix) is not one of the run's models yet."""
    folds = {fold: str((tmp_path / "run" / f"fold-{fold}").resolve()) for fold in (0, 1)}
    scores = {
        folds[0]: ("other", dict.fromkeys(evaluation.CROSS_SOURCE_METRICS, 0.8), set()),
        folds[1]: ("other", dict.fromkeys(evaluation.CROSS_SOURCE_METRICS, 0.2), set()),
    }
    means = evaluation.cross_source_scores([(tmp_path / "run", {"folds": {"0": {}}})], scores)
    assert means == {"other": {"models": 1, "copies_left_out": 0} | dict.fromkeys(evaluation.CROSS_SOURCE_METRICS, 0.8)}


def test_summary_averages_each_class_recall_over_folds_and_counts_flops_at_the_runs_size(run, tmp_path):
    results = json.loads((run / "cv_results.json").read_text())
    size = results["args"]["settings"]["image_size"]
    for fold, recall in zip(sorted(results["folds"]), (1.0, 0.5), strict=True):
        results["folds"][fold]["recall"] = dict.fromkeys(CLASSES, recall)
    entries = {}
    for name, image_size in (("as-run", size), ("twice", 2 * size)):
        results["args"]["settings"]["image_size"] = image_size
        (tmp_path / name).mkdir()
        (tmp_path / name / "cv_results.json").write_text(json.dumps(results))
        (entries[name],) = evaluation.summarize_runs([tmp_path / name], [])["protocols"]["grouped"].values()
    assert entries["as-run"]["recall"] == dict.fromkeys(CLASSES, pytest.approx(0.75))
    assert entries["twice"]["forward_gflops"] == pytest.approx(4 * entries["as-run"]["forward_gflops"], rel=0.05)


def test_copies_of_a_runs_sources_under_another_sources_name_are_the_rows_grouped_with_them():
    """prepare_dataset.py puts copies (mirrored, re-windowed) in one near-duplicate group across sources: a third
    source's row grouped with a figshare row is a figshare slice, one in a group of its own is not."""
    train = {
        "file": ["a/glioma/figshare-1.jpg", "b/glioma/br35h-1.jpg", "c/glioma/copy.jpg", "c/glioma/own.jpg"],
        "source": ["figshare", "br35h", "sartaj", "sartaj"],
        "group": [0, 1, 0, 2],
        "label": [0, 0, 0, 0],
    }
    assert data.copies_of_sources(train, ["figshare", "br35h"], "any", ["glioma"]) == ["c/glioma/copy.jpg"]
    assert data.copies_of_sources(train, ["br35h"], "any", ["glioma"]) == []
    assert data.copies_of_sources(train, None, "any", ["glioma"]) == []  # a run on every source has no other source
    del train["group"]
    assert data.copies_of_sources(train, ["figshare"], "any", ["glioma"]) is None


def test_cross_source_scores_leave_out_copies_of_the_runs_sources_and_count_them(monkeypatch, tmp_path):
    """A public set re-publishing slices of the run's own sources: those are not another source's slices. Each
    model's scores are recomputed from its predictions without them."""
    copies = frozenset({"glioma/copy.jpg"})
    monkeypatch.setattr(evaluation, "run_file_endings", lambda *settings: (frozenset(), copies))
    predictions = [
        {"file": "glioma/copy.jpg", "truth": "glioma", "predicted": "glioma"},  # the model trained on its original
        {"file": "glioma/new.jpg", "truth": "glioma", "predicted": "notumor"},
        {"file": "notumor/new.jpg", "truth": "notumor", "predicted": "notumor"},
    ]
    as_scored = {"accuracy": 2 / 3, "tumor_found": 0.5, "notumor_specificity": 1.0, "predictions": predictions}
    run = {"folds": {"0": {}}, "args": {"settings": {"dataset": "d", "sources": ["figshare"]}}}
    fold = str((tmp_path / "run" / "fold-0").resolve())

    means = evaluation.cross_source_scores([(tmp_path / "run", run)], {fold: ("sartaj", as_scored, set())})

    assert means == {
        "sartaj": {"models": 1, "copies_left_out": 1, "accuracy": 0.5, "tumor_found": 0.0, "notumor_specificity": 1.0}
    }


def test_summary_names_every_machine_that_trained_a_continued_runs_folds(run, tmp_path):
    """A run continued on a second machine records that machine at its top; its first folds came from the first."""
    copy = shutil.copytree(run, tmp_path / "continued")
    results = json.loads((copy / "cv_results.json").read_text())
    first, second = sorted(results["folds"])
    results["folds"][first]["device"], results["folds"][second]["device"] = "GPU A", "GPU B"
    results["device"] = "GPU B"
    (copy / "cv_results.json").write_text(json.dumps(results))
    output = tmp_path / "summary.json"
    assert evaluation.main(["summary", str(copy), "--output", str(output)]) == 0
    summary = json.loads(output.read_text())
    assert summary["protocols"]["grouped"]["tiny"]["device"] == ["GPU A", "GPU B"]
    assert summary["device"] == "GPU A, GPU B"


def test_summary_rejects_an_unfinished_run(tmp_path, capsys):
    assert evaluation.main(["summary", str(tmp_path)]) == 2
    assert "not a finished train.py cross-validation run" in capsys.readouterr().err


# ---------------------------------------------------------------- what the reported numbers are over (mutation review)
def test_each_listed_strength_alters_the_slices_by_that_strength(slice_image):
    """The robustness conditions apply each corruption at the strength they report (not one strength for all)."""
    listed = evaluation.conditions([(300, 168)], set(evaluation.CORRUPTIONS), seed=0)
    assert listed[0][:2] == ("clean", None) and listed[0][2] is None
    original = pixels(slice_image)
    for name, strengths in evaluation.CORRUPTIONS.items():
        points = [(strength, alter) for listed_name, strength, alter, _ in listed if listed_name == name]
        assert [strength for strength, _ in points] == list(strengths)
        altered = [alter(7, slice_image) for _, alter in points]
        if name == "downscale":
            assert [image.size for image in altered] == [
                tuple(round(side * strength) for side in slice_image.size) for strength in strengths
            ]
            continue
        errors = [np.abs(pixels(image) - original).mean() for image in altered]
        assert len(set(errors)) == len(errors), f"{name}: two strengths alter the slice alike: {errors}"
        if name != "contrast":
            assert errors == sorted(errors), f"{name}: {errors}"


def test_gaussian_noise_strength_is_a_fraction_of_full_scale():
    grey = Image.new("L", (128, 128), 128)
    for strength in evaluation.CORRUPTIONS["gaussian_noise"]:
        noisy = evaluation.corrupt(grey, "gaussian_noise", strength, np.random.default_rng(0))
        assert pixels(noisy).std() == pytest.approx(strength * 255, rel=0.05)


def fake_predictions(monkeypatch, notumor: int) -> None:
    """Every fold model calls a real slice glioma, and a uniform one (what the re-renderings below make) notumor."""

    def predict(model, images, processor, device, batch_size):
        probs = torch.zeros(len(images), len(CLASSES))
        probs[:, CLASSES.index("glioma")] = 1
        probs[images.float().flatten(1).std(dim=1) < 1] = torch.eye(len(CLASSES))[notumor]
        return probs

    monkeypatch.setattr(evaluation, "predict", predict)
    monkeypatch.setattr(evaluation, "as_br35h", lambda image, size, rng: Image.new("L", (64, 64), 200))
    monkeypatch.setattr(evaluation, "as_figshare", lambda image, rng: Image.new("L", (64, 64), 200))


def test_shortcut_flip_rate_is_of_tumor_slices_called_notumor_only_once_re_rendered(run, tmp_path, monkeypatch):
    """Tumor slices no model called notumor, all called notumor once rendered as Br35H: a flip rate of 1, for a run
    of both folds and for one of fold 0 alone evaluated beside it (its rate over its own held-out slices only)."""
    fake_predictions(monkeypatch, CLASSES.index("notumor"))
    one_fold = shutil.copytree(run, tmp_path / "one-fold", ignore=shutil.ignore_patterns("fold-1"))
    output = tmp_path / "robustness.json"
    arguments = ["robustness", str(run), str(one_fold), "--only", "tumor_as_br35h,notumor_as_figshare"]
    assert evaluation.main([*arguments, "--output", str(output)]) == 0
    result = json.loads(output.read_text())["runs"]
    tumor = {"called_notumor_clean": 0.0, "called_notumor_altered": 1.0, "flip_rate": 1.0}
    assert result[str(run)]["shortcut"]["tumor_as_br35h"] == {"slices": 30, **tumor}
    assert result[str(run)]["shortcut_flip_rate"] == 1.0
    # healthy slices all called a tumor as they are: none could flip to a tumor call
    healthy = {"slices": 10, "called_tumor_clean": 1.0, "called_tumor_altered": 0.0, "flip_rate": None}
    assert result[str(run)]["shortcut"]["notumor_as_figshare"] == healthy
    settings = json.loads((run / "run_args.json").read_text())["settings"]
    table = data.load_table(settings["dataset"], settings["protocol"], False)
    in_fold_0 = int(((table.folds == 0) & (table.labels != CLASSES.index("notumor"))).sum())
    assert result[str(one_fold)]["shortcut"]["tumor_as_br35h"] == {"slices": in_fold_0, **tumor}


def test_robustness_leaves_untyped_tumours_out_of_the_four_class_accuracy(run, tmp_path, monkeypatch):
    """A run trained with --untyped-tumors: those slices have no class to be right about, so the held-out accuracy
    (and each corruption's) is over the typed slices alone, as train.py scores them."""
    fake_predictions(monkeypatch, CLASSES.index("notumor"))
    untyped_run = shutil.copytree(run, tmp_path / "untyped")
    saved = json.loads((untyped_run / "run_args.json").read_text())
    dataset, protocol = saved["settings"]["dataset"], saved["settings"]["protocol"]
    table = data.load_table(dataset, protocol, False)
    files = data.read_splits(dataset)[0]["train"]["file"]
    glioma = np.flatnonzero(table.labels == CLASSES.index("glioma"))[:4]
    listing = tmp_path / "untyped.txt"
    listing.write_text("".join(f"{files[row]}\n" for row in glioma))
    saved["settings"]["untyped_tumors"] = str(listing)
    (untyped_run / "run_args.json").write_text(json.dumps(saved))
    output = tmp_path / "robustness.json"
    assert evaluation.main(["robustness", str(untyped_run), "--only", "jpeg", "--output", str(output)]) == 0
    entry = json.loads(output.read_text())["runs"][str(untyped_run)]
    typed = np.ones(len(table.labels), dtype=bool)
    typed[glioma] = False
    expected = [
        float((table.labels[typed & (table.folds == fold)] == CLASSES.index("glioma")).mean()) for fold in (0, 1)
    ]
    assert entry["clean"]["accuracy"]["folds"] == pytest.approx(expected)  # every typed slice is called glioma
    assert entry["clean"]["accuracy"]["std"] == pytest.approx(np.std(expected, ddof=1))
    assert entry["corruptions"]["jpeg"][0]["accuracy"]["folds"] == pytest.approx(expected)


# ---------------------------------------------------------------- summary of several seeds, variants and protocols
def summary_run(run: Path, folder: Path, model: str, protocol: str, seed: int, accuracies, params: int) -> Path:
    """A finished run as summary reads it (cv_results.json): `run`'s, with another model, protocol, seed, fold
    accuracies and parameter count."""
    results = json.loads((run / "cv_results.json").read_text())
    results["args"]["settings"] |= {"model": model, "protocol": protocol, "seed": seed}
    results["params"] = params
    for fold, accuracy in zip(sorted(results["folds"]), accuracies, strict=True):
        results["folds"][fold]["accuracy"] = accuracy
    folder.mkdir(parents=True)
    (folder / "cv_results.json").write_text(json.dumps(results))
    return folder


def test_summary_pairs_folds_of_the_same_seed_and_keeps_each_variants_parameters(run, tmp_path):
    """Two seeds of each variant: differences pair each (seed, fold) with its own; given in another order."""
    tiny = json.loads((run / "cv_results.json").read_text())["args"]["settings"]["model"]
    runs = [
        summary_run(run, tmp_path / "improved-42", "improved", "grouped", 42, [0.9, 0.8], 17_000_000),
        summary_run(run, tmp_path / "improved-1", "improved", "grouped", 1, [0.6, 0.7], 17_000_000),
        summary_run(run, tmp_path / "tiny-1", tiny, "grouped", 1, [0.5, 0.8], 100_000),
        summary_run(run, tmp_path / "tiny-42", tiny, "grouped", 42, [0.85, 0.8], 100_000),
    ]
    summary = evaluation.summarize_runs(runs, [])
    variants = summary["protocols"]["grouped"]
    assert variants["improved"]["params"] == 17_000_000 and variants["tiny"]["params"] == 100_000
    assert variants["improved"]["seeds"] == [42, 1] and variants["tiny"]["folds"] == 4
    paired = variants["tiny"]["paired_with_improved"]
    differences = [0.9 - 0.85, 0.8 - 0.8, 0.6 - 0.5, 0.7 - 0.8]
    assert paired["folds"] == 4 and paired["seeds"] == 2
    assert paired["improved_minus_this_mean"] == pytest.approx(np.mean(differences))
    assert paired["improved_minus_this_std"] == pytest.approx(np.std(differences, ddof=1))
    assert (paired["improved_ahead"], paired["ties"]) == (2, 1)


def test_summary_compares_and_headlines_within_a_protocol(run, tmp_path):
    """Each variant is paired with the improved model of its own protocol; the summary's headline flip rate and
    cross-source scores are the improved model's under the grouped protocol when it was measured there."""
    tiny = json.loads((run / "cv_results.json").read_text())["args"]["settings"]["model"]
    runs = {
        ("grouped", "improved"): summary_run(run, tmp_path / "g-improved", "improved", "grouped", 42, [0.9, 0.8], 1),
        ("grouped", "tiny"): summary_run(run, tmp_path / "g-tiny", tiny, "grouped", 42, [0.8, 0.8], 1),
        ("random", "improved"): summary_run(run, tmp_path / "s-improved", "improved", "random", 42, [0.7, 0.6], 1),
        ("random", "tiny"): summary_run(run, tmp_path / "s-tiny", tiny, "random", 42, [0.7, 0.7], 1),
    }
    rates = {("grouped", "improved"): 0.1, ("random", "improved"): 0.3}
    robustness = tmp_path / "robustness.json"
    measured = {str(runs[key]): {"folds": [0, 1], "shortcut_flip_rate": rate} for key, rate in rates.items()}
    robustness.write_text(json.dumps({"runs": measured}))
    external, scores = tmp_path / "external.json", {"grouped": 0.25, "random": 0.75}
    scored = {
        str(runs[(protocol, "improved")] / f"fold-{fold}"): dict.fromkeys(evaluation.CROSS_SOURCE_METRICS, score)
        for protocol, score in scores.items()
        for fold in (0, 1)
    }
    external.write_text(json.dumps({"data": "somewhere/other-source", "models": scored}))
    summary = evaluation.summarize_runs(list(runs.values()), [robustness], [external])
    grouped, stratified = summary["protocols"]["grouped"], summary["protocols"]["stratified"]
    assert grouped["tiny"]["paired_with_improved"]["improved_minus_this_mean"] == pytest.approx(0.05)
    assert stratified["tiny"]["paired_with_improved"]["improved_minus_this_mean"] == pytest.approx(-0.05)
    assert summary["shortcut_flip_rate"] == pytest.approx(0.1)
    assert summary["cross_source"] == {
        "other-source": {
            "models": 2,
            "copies_left_out": 0,
            "accuracy": 0.25,
            "tumor_found": 0.25,
            "notumor_specificity": 0.25,
        }
    }


def test_every_public_sets_folder_name_reads_as_its_class(tmp_path):
    """Br35H's yes/no and each of Kaggle's *_tumor/no_tumor folders are read as the class they hold."""
    named = {
        "yes": "tumor",
        "no": "notumor",
        "glioma_tumor": "glioma",
        "meningioma_tumor": "meningioma",
        "pituitary_tumor": "pituitary",
        "no_tumor": "notumor",
    }
    for name in named:
        (tmp_path / name).mkdir()
        Image.new("L", (8, 8)).save(tmp_path / name / "slice.png")
    files = external_files(tmp_path, CLASSES)
    assert {file.parent.name: truth for file, truth in files} == named
