"""make_release.py end to end on the tiny 2-fold train.py run of test_evaluation: the release folder it writes is
calibrated, carries its unfamiliar-image detector, stores float16 shards, loads as users load it, and its card and
report hold the numbers measured on it."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open
from test_evaluation import external_folder, run  # noqa: F401 (fixtures)
from transformers import AutoModelForImageClassification

import make_release
from brain_resnet import data, reports
from brain_resnet.calibration import fit_temperature
from brain_resnet.metrics import share_interval
from brain_resnet.modeling import BrainResNetImageProcessor

LABELS = ["glioma", "meningioma", "notumor", "pituitary"]


def held_out_logits(model, run) -> tuple:  # noqa: F811
    """What `model` gives fold 0's held-out slices of a known class, as make_release.py fits and scores on them:
    its logits before any temperature, their labels and their near-duplicate groups."""
    settings = json.loads((run / "run_args.json").read_text())["settings"]
    table = data.load_table(settings["dataset"], settings["protocol"], False)
    held_out = (table.folds == 0) & (table.labels != data.ANY_TUMOUR)
    processor = BrainResNetImageProcessor.from_pretrained(run / "fold-0")
    (images,) = data.decode_images([table.images[i] for i in np.flatnonzero(held_out)], processor, [processor.size], 1)
    logits, _ = make_release.logits_and_features(model.eval(), images, processor, 64)
    return logits, table.labels[held_out], table.groups[held_out]


@pytest.fixture(scope="module")
def release(run, tmp_path_factory) -> tuple:  # noqa: F811
    work = tmp_path_factory.mktemp("release")
    external = work / "other-source"
    for name in ("tumor", "notumor"):  # tumor slices of unknown type, and healthy ones
        (external / name).mkdir(parents=True)
    for image in sorted((run.parent / "src").rglob("*.jpg"))[::7]:
        target = "notumor" if image.parent.name == "notumor" else "tumor"
        (external / target / image.name).write_bytes(image.read_bytes())
    (external / "tumor" / "broken.jpg").write_bytes(b"not a jpeg")
    out, report = work / "release", work / "release.json"
    out.mkdir()  # a previous release, to be replaced whole
    (out / "config.json").write_text('{"model_type": "brain_resnet"}')
    (out / "stale.txt").write_text("the previous release")
    argv = [str(run / "fold-0"), "--output", str(out), "--external", str(external), "--report", str(report)]
    assert make_release.main(argv) == 0
    return out, json.loads(report.read_text())


def test_release_is_calibrated_and_carries_its_detector(release):
    out, report = release
    model = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True)

    assert model.dtype == torch.float32
    assert model.config.calibration_temperature == pytest.approx(report["calibration_temperature"])
    assert model.config.calibration_temperature != 1.0
    assert model.config.familiarity_threshold == pytest.approx(report["familiarity_threshold"])
    assert model.config.familiarity_threshold > 0
    assert model.config.training_info["calibrated_on"] == "fold 0 (held out)"
    assert not (out / "stale.txt").exists()  # the folder is replaced, not mixed with the previous release
    for shard in out.glob("*.safetensors"):
        assert shard.stat().st_size <= 15e6
        with safe_open(str(shard), "pt") as weights:
            dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}  # noqa: SIM118
            assert dtypes - {"I64"} == {"F16"}  # every float is stored in half precision (I64: BatchNorm counters)


def test_report_measures_the_released_model(release, run):  # noqa: F811
    out, report = release
    held_out = report["held_out_scores"]
    assert held_out["slices"] == 20  # fold 0 of 40 slices in 2 folds
    table = data.load_table(json.loads((run / "run_args.json").read_text())["settings"]["dataset"], "grouped", False)
    assert held_out["groups"] == len(np.unique(table.groups[table.folds == 0])) <= 20
    assert held_out["unfamiliar"] <= 0.1  # the threshold is the held-out 95th percentile
    assert held_out["log_loss"] <= report["held_out_scores_uncalibrated"]["log_loss"] + 1e-4
    other = report["external"]["other-source"]
    assert other["slices"] == sum(other["predicted_by_class"][name][label] for name in other["predicted_by_class"]
                                  for label in other["predicted_by_class"][name])  # fmt: skip
    assert len(other["skipped"]) == 1 and "broken.jpg" in other["skipped"][0]
    assert 0 <= other["unfamiliar"] <= 1 and other["tumor_found"] is not None and other["accuracy"] is not None
    split = [other[key] for key in ("accuracy_familiar", "accuracy_unfamiliar") if other[key] is not None]
    assert split and all(0 <= value <= 1 for value in split)
    assert report["training_device"] == "cpu" and report["command"].startswith("python make_release.py")
    crossed = report["held_out_scores_cross_fitted"]  # each half scored with what the other half fitted
    assert crossed["accuracy"]["mean"] == pytest.approx(report["held_out_scores_uncalibrated"]["accuracy"])
    assert set(crossed) >= {"log_loss", "calibration_error", "unfamiliar", "healthy_called_tumor"}

    card = (out / "README.md").read_text()
    assert "**Trained on a CPU**" in card  # where the weights came from, said up front
    assert f"| other-source | {other['slices']} |" in card
    assert f"the 20 slices ({held_out['groups']} groups of near-duplicates and adjacent slices)" in card
    assert f"{held_out['accuracy']:.4f}" in card and "fold 0's model" in card
    assert f"| released, fitted on the other half (cross-fitted) | {crossed['accuracy']['mean']:.4f} ± " in card
    low, high = held_out["intervals"]["accuracy"]  # how far other patients like these could move it
    assert 0 <= low <= held_out["accuracy"] <= high <= 1 and low < high
    for share in ("tumor_found", "notumor_specificity"):
        assert held_out["intervals"][share][0] <= held_out[share] <= held_out["intervals"][share][1]
    assert f"| {held_out['accuracy']:.4f} ({low:.3f}–{high:.3f}) |" in card and "95% intervals" in card
    # the accuracies of the slices the release calls familiar and of those it calls unfamiliar, each under its name
    model = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True).eval()
    processor = BrainResNetImageProcessor.from_pretrained(out)
    slices, kept, _ = make_release.read_external(make_release.external_files(out.parent / "other-source", LABELS))
    (images,) = data.decode_images(slices, processor, [processor.size], 1)
    probs, unfamiliarity = make_release.released_outputs(model, images, processor, 64)
    truths = np.array([truth for _, truth in kept])
    right = np.array(LABELS)[probs.argmax(axis=1)] == truths
    for key, flagged in (("accuracy_familiar", unfamiliarity <= 1), ("accuracy_unfamiliar", unfamiliarity > 1)):
        scored = flagged & (truths != "tumor")
        assert other[key] == (float(right[scored].mean()) if scored.any() else None)
    split_keys = ("accuracy_familiar", "accuracy_unfamiliar")
    shown = " / ".join("–" if other[key] is None else f"{other[key]:.4f}" for key in split_keys)
    assert f"| {other['unfamiliar']:.1%} | {shown} |" in card


def test_release_intervals_resample_the_held_out_folds_near_duplicate_groups(run, tmp_path, monkeypatch):  # noqa: F811
    """Two held-out slices of one patient are about one case: the card's intervals resample those pairs whole."""
    real_load_table = make_release.load_table

    def in_pairs(*args, **kwargs):
        table = real_load_table(*args, **kwargs)
        held_out = np.flatnonzero(table.folds == 0)
        table.groups = table.groups.copy()
        table.groups[held_out] = table.groups.max() + 1 + np.arange(len(held_out)) // 2
        return table

    monkeypatch.setattr(make_release, "load_table", in_pairs)
    out, report = tmp_path / "release", tmp_path / "release.json"
    assert make_release.main([str(run / "fold-0"), "--output", str(out), "--report", str(report)]) == 0
    scores = json.loads(report.read_text())["held_out_scores"]
    model = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True)
    logits, labels, _ = held_out_logits(model, run)
    hits, pairs = logits.argmax(dim=1).numpy() == labels, np.arange(len(labels)) // 2

    assert scores["groups"] == 10
    assert scores["intervals"]["accuracy"] == pytest.approx(share_interval(hits, pairs))


def test_intervals_count_a_group_of_near_duplicates_as_one_case():
    every_one = np.ones(70, dtype=bool)  # 70 of 70 tumors found
    low, high = share_interval(every_one, groups=np.arange(70))
    assert high == 1 and low == pytest.approx(0.025 ** (1 / 70))  # exact binomial: 70 cases, none missed
    assert share_interval(every_one, groups=np.repeat(np.arange(14), 5))[0] < 0.8  # 14 patients say much less
    rng = np.random.default_rng(1)
    per_patient = np.repeat(rng.random(200) < 0.9, 5)  # each patient's 5 slices right or wrong together
    clustered = share_interval(per_patient, groups=np.repeat(np.arange(200), 5))
    independent = share_interval(per_patient, groups=np.arange(1000))
    assert clustered[0] <= per_patient.mean() <= clustered[1]
    assert clustered[1] - clustered[0] > 1.5 * (independent[1] - independent[0])
    assert share_interval(per_patient, groups=np.repeat(np.arange(200), 5)) == clustered  # one report each time
    assert share_interval(per_patient[:5], groups=np.zeros(5)) is None  # one case: no interval to give


def test_interval_of_hits_averaged_over_repeated_fits():
    # half the slices right with every fit, half with one fit in two: a share of 0.75, and never a perfect score
    averaged = np.tile([1.0, 0.5], 100)
    low, high = share_interval(averaged, groups=np.arange(200))
    assert 0.6 < low < 0.75 < high < 0.9
    assert share_interval(np.ones(200), groups=np.arange(200)) == share_interval(np.ones(200, bool), np.arange(200))


def test_operating_point_is_set_on_held_out_healthy_slices_and_shipped_in_the_weights(release, run, tmp_path):  # noqa: F811
    out, report = tmp_path / "release", tmp_path / "release.json"
    argv = [str(run / "fold-0"), "--output", str(out), "--report", str(report), "--healthy-false-alarms", "0.2"]
    assert make_release.main(argv) == 0
    shifted = json.loads(report.read_text())
    point = shifted["operating_point"]
    plain = AutoModelForImageClassification.from_pretrained(release[0], trust_remote_code=True)
    model = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True)
    notumor = model.config.label2id["notumor"]

    assert point["held_out_healthy_called_tumor"] <= 0.2  # measured on the reloaded release: 5 healthy slices
    assert model.config.training_info["operating_point"]["notumor_logit_offset"] == point["notumor_logit_offset"]
    at_point = model.config.training_info["accuracy_at_operating_point"]  # what the Space shows beside `accuracy`
    assert at_point == pytest.approx(shifted["held_out_scores"]["accuracy"], abs=0.051)  # 20 slices: one may tie
    bias, plain_bias = model.classifier[-1].bias.detach(), plain.classifier[-1].bias.detach()
    assert float(bias[notumor] - plain_bias[notumor]) == pytest.approx(point["notumor_logit_offset"], abs=1e-6)
    assert torch.equal(torch.cat([bias[:notumor], bias[notumor + 1 :]]),
                       torch.cat([plain_bias[:notumor], plain_bias[notumor + 1 :]]))  # fmt: skip
    assert shifted["held_out_scores_uncalibrated"]["accuracy"] == release[1]["held_out_scores"]["accuracy"]
    card = (out / "README.md").read_text()
    assert "The operating point was set on these slices' healthy ones" in card
    crossed = shifted["held_out_scores_cross_fitted"]  # the offset fitted on one half, scored on the other
    assert f"So fitted, the operating point called {crossed['healthy_called_tumor']['mean']:.1%}" in card
    # the Space's headline figure (with it, the page leaves out the in-sample accuracy_at_operating_point)
    assert model.config.training_info["accuracy_cross_fitted"] == pytest.approx(crossed["accuracy"]["mean"], abs=5e-5)
    low, high = model.config.training_info["accuracy_cross_fitted_interval"]  # the Space's headline shows it
    assert [low, high] == pytest.approx(crossed["accuracy"]["interval"], abs=5e-5) and low <= crossed["accuracy"][
        "mean"
    ] <= high
    assert f"{crossed['accuracy']['mean']:.4f} ± {crossed['accuracy']['std']:.4f} ({low:.3f}–{high:.3f})" in card
    first = ModelCard(card).data.eval_results[0]  # the model index leads with the out-of-sample figure
    assert "as released" in first.metric_name and first.metric_value == round(crossed["accuracy"]["mean"], 4)
    # fitted on the logits as shipped, at the operating point: the temperature minimises their log-loss
    logits, labels, _ = held_out_logits(model, run)
    temperature = fit_temperature(logits, torch.from_numpy(labels))
    assert model.config.calibration_temperature == pytest.approx(temperature, rel=1e-4)
    assert at_point == float(np.mean(logits.argmax(dim=1).numpy() == labels))


def test_the_operating_point_is_rounded_up_for_float16_storage():
    """The release stores the notumor bias in float16: rounded up, never to the nearest value below what was
    asked, which would call the healthy slice whose alarm the offset was to clear a tumor again."""
    head = torch.nn.Linear(2, 3).requires_grad_(False)
    head.bias.copy_(torch.tensor([0.0, 10.0, 0.0]))  # float16 holds 10, 10.0078125, 10.015625 around it
    notumor, margin = 1, 0.0088
    logits = torch.tensor([[margin, 0.0, 0.0], [0.0, 5.0, 0.0]])  # healthy slices: one a tumor by 0.0088, one not
    labels = np.array([notumor, notumor])

    offset = make_release.shift_notumor_logit(SimpleNamespace(classifier=[head]), logits, labels, notumor, 0.4)

    stored = float(head.bias[notumor])
    assert stored == float(np.float16(stored)) and offset == stored - 10.0
    assert offset > margin and (logits.argmax(dim=1) == notumor).all()  # no healthy slice is called a tumor


def test_what_is_not_a_fold_of_a_finished_run_is_refused_and_nothing_is_written(run, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "release"
    assert make_release.main([str(run), "--output", str(out)]) == 2
    assert "is not a fold folder of a finished train.py run" in capsys.readouterr().err
    assert make_release.main([str(run / "fold-0"), "--output", str(out), "--external", str(tmp_path / "none")]) == 2
    assert "no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_release.main([str(run / "fold-0"), "--output", str(out), "--healthy-false-alarms", "0.7"])
    assert "out of range" in capsys.readouterr().err
    assert not out.exists()


def test_an_output_that_is_not_a_release_is_refused_before_the_work(run, tmp_path, monkeypatch, capsys):  # noqa: F811
    """--output is replaced whole: a folder of someone's files, a file or the training run itself must survive."""

    def load_too_early(*args, **kwargs):
        raise AssertionError("the check comes before the dataset is read")

    monkeypatch.setattr(make_release, "load_table", load_too_early)
    images = tmp_path / "my-images"
    images.mkdir()
    (images / "scan.jpg").write_bytes(b"mine")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for output, message in [
        (images, "holds other files, not an earlier release"),
        (notes, "is a file"),
        (run, "would replace the training run"),
        (run / "fold-0", "would replace the training run"),
    ]:
        assert make_release.main([str(run / "fold-0"), "--output", str(output)]) == 2
        assert message in capsys.readouterr().err
    assert (images / "scan.jpg").read_bytes() == b"mine" and notes.read_text() == "mine"
    assert (run / "fold-0" / "config.json").exists()
    for option in ("--workers", "--batch-size"):
        with pytest.raises(SystemExit):
            make_release.main([str(run / "fold-0"), option, "0"])
        assert "out of range" in capsys.readouterr().err


def test_the_recipe_cross_validation_is_checked_and_shipped_beside_the_release_figure(run, tmp_path, capsys):  # noqa: F811
    settings = json.loads((run / "run_args.json").read_text())["settings"]
    recipe = {  # another seed of the same recipe, trained where the dataset lay elsewhere
        "settings": settings | {"seed": 7, "dataset": f"/elsewhere/{settings['dataset'].rsplit('/', 1)[-1]}"},
        "accuracy": 0.9244,
        "interval": [0.9108, 0.9374],
        "folds": 2,
        "device": "NVIDIA H200",
        "healthy_false_alarms": 0.2,
        "mirror_average": False,
    }
    recipe_file, out, report = tmp_path / "recipe.json", tmp_path / "release", tmp_path / "release.json"
    recipe_file.write_text(json.dumps(recipe))
    argv = [str(run / "fold-0"), "--output", str(out), "--healthy-false-alarms", "0.2"]
    assert make_release.main([*argv, "--recipe-cross-validation", str(recipe_file), "--report", str(report)]) == 0
    shipped = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True).config.training_info
    assert shipped["recipe_cross_validation"] == {
        key: recipe[key] for key in ("folds", "accuracy", "interval", "device")
    }
    assert json.loads(report.read_text())["recipe_cross_validation"]["file"] == str(recipe_file)
    assert "**The same recipe over all 2 folds**" in (out / "README.md").read_text()

    other = tmp_path / "other"
    for change in ({"settings": settings | {"paste_prob": 0.5}}, {"mirror_average": True}):
        recipe_file.write_text(json.dumps(recipe | change))
        assert make_release.main([*argv[:1], "--output", str(other), *argv[3:], "--recipe-cross-validation",
                                  str(recipe_file)]) == 2  # fmt: skip
        assert "is another recipe: " in capsys.readouterr().err
    recipe_file.write_text(json.dumps({"accuracy": 0.99}))
    assert make_release.main([*argv[:1], "--output", str(other), "--recipe-cross-validation", str(recipe_file)]) == 2
    assert "not a file that results/gpu-6/operating_points.py wrote" in capsys.readouterr().err
    assert not other.exists()


def test_an_operating_point_that_cannot_be_cross_checked_is_refused_before_the_work(run, tmp_path, monkeypatch, capsys):  # noqa: F811
    real_load_table = make_release.load_table

    def one_healthy_group(*args, **kwargs):  # every healthy slice one patient's: no half can be scored out of sample
        table = real_load_table(*args, **kwargs)
        table.groups = table.groups.copy()
        table.groups[table.labels == table.class_names.index("notumor")] = -1
        return table

    def decode_too_early(*args, **kwargs):
        raise AssertionError("the check comes before the slices are decoded")

    monkeypatch.setattr(make_release, "load_table", one_healthy_group)
    monkeypatch.setattr(make_release, "decode_images", decode_too_early)
    out = tmp_path / "release"
    assert make_release.main([str(run / "fold-0"), "--output", str(out), "--healthy-false-alarms", "0.05"]) == 2
    assert "held-out fold 0 has 1 near-duplicate group(s) of healthy slices" in capsys.readouterr().err
    assert not out.exists()


def test_release_card_says_what_the_weights_are_and_leads_its_model_index_with_the_released_accuracy(release):
    out, report = release
    card = ModelCard((out / "README.md").read_text())
    crossed = report["held_out_scores_cross_fitted"]["accuracy"]["mean"]

    assert "with the operating point and calibration that make_release.py fitted on fold 0" in card.text
    assert "not the release model's" not in card.text  # train.py's wording for a fold beside a full/ model
    assert "Its held-out scores are one fold's" in card.text and "release-only" not in card.text
    first = card.data.eval_results[0]
    assert (first.metric_type, first.metric_value) == ("accuracy", round(crossed, 4))
    assert "as released" in first.metric_name
    assert all("as released" not in result.metric_name for result in card.data.eval_results[1:])


def test_a_one_fold_runs_card_has_no_mean_over_folds_and_names_its_dataset_as_given(run, monkeypatch):  # noqa: F811
    results = json.loads((run / "cv_results.json").read_text())
    results["folds"] = {"0": results["folds"]["0"]}  # a release's run: fold 0 held out, no other fold trained
    results["summary"]["folds"] = [0]
    monkeypatch.chdir(run.parent)  # where the dataset folder is: train.py stored its resolved path

    text = reports.results_markdown(results, 0, "someone/brain-resnet")
    names = [result.metric_name for result in reports.model_index_results(results)]

    assert "fold 0 of the grouped 2-fold split held out, of `dataset`" in text  # not the resolved path
    assert "mean ± std" not in text  # one fold has no spread to show
    assert names and all(name.endswith("(held-out fold 0, as trained)") for name in names)


def test_push_to_hub_uploads_the_release_and_a_failed_upload_keeps_it(run, tmp_path, monkeypatch, capsys):  # noqa: F811
    import huggingface_hub

    calls = []

    class RecordingHfApi:
        fail = False

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id))

        def upload_folder(self, folder_path, repo_id, **kwargs):
            if RecordingHfApi.fail:
                raise ConnectionError("no network")
            calls.append(("upload_folder", folder_path, repo_id))

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHfApi)
    out = tmp_path / "release"
    argv = [str(run / "fold-0"), "--output", str(out), "--push-to-hub", "someone/brain-resnet"]
    assert make_release.main(argv) == 0
    assert calls == [("create_repo", "someone/brain-resnet"), ("upload_folder", out, "someone/brain-resnet")]
    assert 'from_pretrained("someone/brain-resnet", trust_remote_code=True)' in (out / "README.md").read_text()

    RecordingHfApi.fail = True
    assert make_release.main(argv) == 2
    error = capsys.readouterr().err
    assert "upload to someone/brain-resnet failed (ConnectionError: no network)" in error
    assert f"`hf upload someone/brain-resnet {out}`" in error and (out / "config.json").exists()
    with pytest.raises(SystemExit):
        make_release.main([*argv, "--hub-model-id", "someone/other"])
    assert "name different repos" in capsys.readouterr().err


def test_mirror_average_is_shipped_and_everything_is_fitted_with_it(run, release, tmp_path):  # noqa: F811
    out, report = tmp_path / "release", tmp_path / "release.json"
    argv = [str(run / "fold-0"), "--output", str(out), "--report", str(report), "--mirror-average"]
    assert make_release.main(argv) == 0
    model = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True)
    pixels = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        answer, mirrored = model(pixels), model(pixels.flip(-1))

    assert model.config.mirror_average and json.loads(report.read_text())["mirror_average"]
    torch.testing.assert_close(answer.logits, mirrored.logits)
    torch.testing.assert_close(answer.unfamiliarity, mirrored.unfamiliarity)
    assert "A slice and its mirror image get one answer" in (out / "README.md").read_text()
    assert not AutoModelForImageClassification.from_pretrained(release[0], trust_remote_code=True).config.mirror_average
