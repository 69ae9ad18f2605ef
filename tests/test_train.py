"""train.py end to end on ~40 real slices at 64 px on the CPU: plain and `accelerate launch` runs, resuming,
offline loading of the fold folders, model card, push, bad input; plus multi-process sharding on two CPU processes.

Most runs use a tiny CONFIG.json variant of the network so that 3 epochs x 2 folds take seconds; the
`accelerate launch` run trains the real improved model for one epoch.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard

import make_release
import train
from brain_resnet import data, engine, folds, hub, reports, runs
from brain_resnet.alignment import source_mean_gap
from brain_resnet.augment import (
    augment,
    gaussian_blur,
    heal_lesions,
    invert_head_contrast,
    mirror_hemispheres,
    paste_lesions,
    random_network_contrast,
    remap_intensity,
    shuffle_quadrants,
    tumour_sides,
)
from brain_resnet.cli import UsageError
from brain_resnet.group_dro import GroupWeights
from brain_resnet.modeling import BrainResNetForImageClassification, BrainResNetImageProcessor
from brain_resnet.style_mixing import mix_styles

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
TINY_CONFIG = {
    "embedding_size": 16,
    "hidden_sizes": [16, 32, 64, 128],
    "depths": [1, 1, 1, 1],
    "stem_branch_channels": [8, 4, 4],
    "se_reduction": 4,
}
PER_CLASS, FOLDS = 10, 2


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def env(workdir) -> dict:
    """Subprocess environment: offline, with a private HF_HOME (no accelerate config, no shared caches)."""
    return os.environ | {
        "HF_HOME": str(workdir / "hf-home"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(autouse=True)
def private_datasets_cache(workdir, monkeypatch):
    """In-process dataset loads cache under the test's folder, not in the user's cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(workdir / "datasets-cache"))


@pytest.fixture(scope="module")
def dataset(workdir, brain_mri_data) -> Path:
    """prepare_dataset.py's folder for 10 slices per class, spread over each class folder, in 2 folds."""
    src, out = workdir / "src", workdir / "dataset"
    for name in CLASSES:
        files = sorted((brain_mri_data / name).iterdir())
        (src / name).mkdir(parents=True)
        for file in files[:: len(files) // PER_CLASS][:PER_CLASS]:
            shutil.copy(file, src / name / file.name)
    command = [sys.executable, "prepare_dataset.py", str(src), str(out), "--folds", str(FOLDS)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def tiny_config(workdir) -> Path:
    path = workdir / "tiny_config.json"
    path.write_text(json.dumps(TINY_CONFIG))
    return path


@pytest.fixture(scope="module")
def common(dataset, tiny_config) -> list[str]:
    return [
        "--dataset", str(dataset), "--folds", "0,1", "--epochs", "3", "--image-size", "64",
        "--batch-size", "8", "--model", str(tiny_config),
    ]  # fmt: skip


def run_train(args: list[str], env: dict, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, *(launcher or []), "train.py", *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def python_run(workdir, common, env) -> Path:
    """`python train.py` on 2 folds, 3 epochs, uninterrupted: the reference run."""
    out = workdir / "python-run"
    done = run_train([*common, "--output-dir", str(out)], env)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def accelerate_run(workdir, dataset, env) -> Path:
    """`accelerate launch` (CPU, one process, every setting passed so no config file is needed), real model."""
    out = workdir / "accelerate-run"
    launcher = [
        "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", "2",
    ]  # fmt: skip
    args = ["--dataset", str(dataset), "--output-dir", str(out), "--folds", "0,1", "--epochs", "1"]
    done = run_train([*args, "--image-size", "64", "--batch-size", "8"], env, launcher)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def read_results(out: Path) -> dict:
    return json.loads((out / "cv_results.json").read_text())


def check_cv_results(out: Path, model_params: int | None = None) -> dict:
    """The documented fields of cv_results.json for a 2-fold run of the test dataset."""
    results = read_results(out)
    assert results["num_folds"] == FOLDS
    assert results["class_names"] == CLASSES
    assert results["device"] == "cpu"
    assert results["num_processes"] == 1
    assert results["args"]["settings"]["protocol"] == "grouped"
    if model_params is not None:
        assert results["params"] == model_params
    assert sorted(results["folds"]) == ["0", "1"]
    for key, entry in results["folds"].items():
        assert entry["fold"] == int(key)
        assert entry["num_train"] + entry["num_eval"] == PER_CLASS * len(CLASSES)
        assert 0 <= entry["accuracy"] <= 1 and 0 <= entry["macro_f1"] <= 1
        for per_class in ("precision", "recall", "f1", "roc_auc", "support"):
            assert sorted(entry[per_class]) == CLASSES
        assert entry["roc_auc_macro"] == pytest.approx(np.mean(list(entry["roc_auc"].values())))
        matrix = np.array(entry["confusion_matrix"])
        assert matrix.shape == (4, 4) and matrix.sum() == entry["num_eval"]
        assert np.trace(matrix) / matrix.sum() == pytest.approx(entry["accuracy"])
        assert sorted(entry["accuracy_by_source"]) == ["br35h", "figshare"]
        by_source = {s: np.array(m) for s, m in entry["confusion_matrix_by_source"].items()}
        assert sum(by_source.values()).tolist() == entry["confusion_matrix"]
        healthy = CLASSES.index("notumor")  # the fixture's healthy slices are Br35H's, its tumours figshare's
        assert by_source["br35h"].sum() == by_source["br35h"][healthy].sum()
        assert by_source["figshare"][healthy].sum() == 0
        source_accuracy = np.trace(by_source["figshare"]) / by_source["figshare"].sum()
        assert source_accuracy == pytest.approx(entry["accuracy_by_source"]["figshare"])
        assert entry["train_images_per_s"] > 0 and entry["wall_seconds"] > 0 and entry["train_seconds"] > 0
        assert entry["device"] == "cpu" and entry["compile"] is False
        # --mixed-precision auto: bf16 where the CPU has bf16 instructions, float32 elsewhere
        assert entry["mixed_precision"] == ("bf16" if engine.native_bf16() else "no")
    summary = results["summary"]
    assert summary["folds"] == [0, 1]
    accuracies = [results["folds"][k]["accuracy"] for k in ("0", "1")]
    assert summary["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    assert summary["accuracy"]["std"] == pytest.approx(np.std(accuracies, ddof=1))
    for name in ("macro_f1", "roc_auc_macro", "train_images_per_s"):
        assert set(summary[name]) == {"mean", "std"}
    assert np.array(summary["confusion_matrix"]).sum() == PER_CLASS * len(CLASSES)
    pooled = [sum(np.array(results["folds"][k]["confusion_matrix_by_source"][s]) for k in ("0", "1")).tolist()
              for s in ("br35h", "figshare")]  # fmt: skip
    assert [summary["confusion_matrix_by_source"][s] for s in ("br35h", "figshare")] == pooled
    return results


def check_model_folder(folder: Path, image_size: int = 64) -> None:
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= names
    assert {"configuration_brain_resnet.py", "modeling_brain_resnet.py", "image_processing_brain_resnet.py"} <= names
    assert "checkpoints" not in names  # removed once the fold is finished
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageClassification"].startswith("modeling_brain_resnet.")
    assert config["training_info"]["image_size"] == image_size and "accuracy" in config["training_info"]
    assert json.loads((folder / "preprocessor_config.json").read_text())["size"] == image_size


def test_python_run_writes_the_documented_outputs(python_run):
    results = check_cv_results(python_run)
    assert results["args"]["settings"]["epochs"] == 3
    for fold in ("fold-0", "fold-1"):
        check_model_folder(python_run / fold)
    log = [json.loads(line) for line in (python_run / "log.jsonl").read_text().splitlines()]
    assert [(r["fold"], r["epoch"]) for r in log] == [(f, e) for f in (0, 1) for e in (1, 2, 3)]
    assert {"train_loss", "train_accuracy", "lr", "train_images_per_s", "eval_loss", "eval_accuracy"} <= set(log[0])
    for png in ("learning_curves.png", "confusion_matrix.png"):
        assert (python_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((python_run / "tensorboard" / "fold-0").iterdir())


def test_accelerate_launch_trains_the_real_model(accelerate_run):
    check_cv_results(accelerate_run, model_params=17_000_920)
    for fold in ("fold-0", "fold-1"):
        check_model_folder(accelerate_run / fold)


LOAD_OFFLINE = """
import json, sys
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

folder, image = sys.argv[1], sys.argv[2]
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
logits = model(**processor(Image.open(image))).logits
classifier = pipeline("image-classification", model=folder, trust_remote_code=True)
print(json.dumps({
    "class": type(model).__name__, "shape": list(logits.shape), "size": processor.size,
    "info": model.config.training_info, "labels": sorted(p["label"] for p in classifier(image)),
}))
"""


@pytest.mark.parametrize("run", ["python_run", "accelerate_run"])
def test_fold_folders_load_offline_with_remote_code(run, request, env, brain_mri_data):
    out = request.getfixturevalue(run)
    image = str(sorted((brain_mri_data / "glioma").iterdir())[0])
    command = [sys.executable, "-c", LOAD_OFFLINE, str(out / "fold-1"), image]
    done = subprocess.run(command, cwd=out, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert loaded["class"] == "BrainResNetForImageClassification"
    assert loaded["shape"] == [1, 4] and loaded["size"] == 64 and loaded["labels"] == CLASSES
    assert loaded["info"]["accuracy"] == read_results(out)["folds"]["1"]["accuracy"]
    assert loaded["info"]["trained_on"] == "all folds but fold 1"


def test_full_run_makes_a_half_size_release_that_loads_as_float32(workdir, dataset, tiny_config, env):
    """--folds full: one model on every fold, stored in float16 (the release folder's size) but loading as float32."""
    from safetensors import safe_open
    from transformers import AutoModelForImageClassification

    out = workdir / "full-run"
    args = ["--dataset", str(dataset), "--output-dir", str(out), "--folds", "full", "--epochs", "1"]
    args += ["--hub-model-id", "someone/brain-release"]  # the card names the repo it is meant for, not the folder
    done = run_train([*args, "--image-size", "64", "--batch-size", "8", "--model", str(tiny_config)], env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = read_results(out)
    assert "folds" not in results and results["full"]["num_train"] == PER_CLASS * len(CLASSES)
    with safe_open(out / "full" / "model.safetensors", framework="pt") as weights:
        dtypes = {weights.get_tensor(name).dtype for name in weights.keys()}  # noqa: SIM118 (not a dict)
    assert dtypes <= {torch.float16, torch.int64}
    model = AutoModelForImageClassification.from_pretrained(out / "full", trust_remote_code=True)
    assert model.dtype == torch.float32
    assert model.config.training_info["trained_on"] == "all folds"
    card = ModelCard((out / "full" / "README.md").read_text())
    assert 'from_pretrained("someone/brain-release", trust_remote_code=True)' in card.text
    assert f'from_pretrained("{out / "full"}"' not in card.text


def test_release_folder_of_the_real_model_is_sharded_below_15_mb_and_loads_exactly(tmp_path):
    """The improved model's release folder: float16 shards of <= 15 MB each (git and the GPU machine's transfer
    limit take them), found by train.py and loaded as float32 weights equal to the float16-rounded originals."""
    from brain_resnet.modeling import BrainResNetConfig, BrainResNetForImageClassification, BrainResNetImageProcessor

    torch.manual_seed(0)
    model = BrainResNetForImageClassification(BrainResNetConfig())
    folder = tmp_path / "full"
    hub.save_model_folder(model, BrainResNetImageProcessor(size=128), folder, half_storage=True)
    shards = sorted(folder.glob("*.safetensors"))
    assert len(shards) >= 2 and all(shard.stat().st_size <= 15_000_000 for shard in shards)
    assert sum(shard.stat().st_size for shard in shards) <= 40 * 2**20
    assert runs.has_weights(folder)
    loaded = BrainResNetForImageClassification.from_pretrained(folder)
    assert loaded.dtype == torch.float32
    for name, tensor in model.state_dict().items():
        expected = tensor.half().float() if tensor.is_floating_point() else tensor
        assert torch.equal(loaded.state_dict()[name], expected), name


def test_stopped_run_resumes_and_finishes_with_the_same_folds(workdir, common, env, python_run):
    """SIGTERM (what a slot's time limit sends) during fold 0's second epoch: a checkpoint, exit 143; --resume
    then finishes both folds exactly as the uninterrupted run did."""
    out = workdir / "stopped-run"
    command = [sys.executable, "train.py", *common, "--output-dir", str(out)]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    log, deadline = out / "log.jsonl", time.monotonic() + 300
    while not (log.exists() and log.read_text().strip()) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert f"Stopped by SIGTERM; continue with: python train.py {' '.join(common)}" in stdout
    assert "1" not in runs.read_json(out / "cv_results.json", {}).get("folds", {})
    stopped_in_fold_0 = not (out / "fold-0" / "model.safetensors").exists()
    if stopped_in_fold_0:  # the usual case; on a very slow machine the signal may land in fold 0's last epoch
        assert list((out / "fold-0" / "checkpoints").glob("epoch-*/progress.json"))

    done = run_train([*common, "--output-dir", str(out), "--resume"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    if stopped_in_fold_0:
        assert "fold-0: resuming after epoch" in done.stdout
    resumed, reference = check_cv_results(out), read_results(python_run)
    for fold in ("0", "1"):
        got, want = resumed["folds"][fold], reference["folds"][fold]
        assert got["confusion_matrix"] == want["confusion_matrix"]
        for name in ("accuracy", "macro_f1", "roc_auc_macro", "eval_loss", "final_train_loss"):
            assert got[name] == pytest.approx(want[name], abs=1e-5), name
        check_model_folder(out / f"fold-{fold}")


def test_finished_run_resumes_to_an_immediate_exit(python_run, common, capsys):
    log_before = (python_run / "log.jsonl").read_text()
    started = time.perf_counter()
    assert train.main([*common, "--output-dir", str(python_run), "--resume"]) == 0
    assert time.perf_counter() - started < 2  # no dataset loading, no model
    assert "fold-0, fold-1 already finished" in capsys.readouterr().out
    assert (python_run / "log.jsonl").read_text() == log_before


def test_a_recorded_fold_whose_model_folder_is_gone_is_trained_again_on_resume(python_run, common, tmp_path, capsys):
    """cv_results.json alone does not make a fold finished: a fold whose weights were lost (a deleted or
    half-copied folder) trains again, and the other fold is left alone."""
    copy = shutil.copytree(python_run, tmp_path / "run")
    (copy / "fold-0" / "model.safetensors").unlink()
    assert train.main([*common, "--output-dir", str(copy), "--resume"]) == 0
    assert "already finished" not in capsys.readouterr().out
    assert (copy / "fold-0" / "model.safetensors").exists()
    log = [json.loads(line) for line in (copy / "log.jsonl").read_text().splitlines()]
    assert [record["fold"] for record in log[-3:]] == [0, 0, 0] and len(log) == 9


def test_processes_started_side_by_side_can_write_the_same_run_file(tmp_path):
    """One train.py process per fold into one run folder (run_matrix.py, the lease scripts) each write
    run_args.json when they find none; no writer may move another's half-written file away."""
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "run_args.json"

    def write_many(writer: int) -> None:
        for _ in range(200):
            runs.write_json(path, {"settings": {"writer": writer}, "padding": "x" * 10_000})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write_many, range(8)))  # re-raises a writer's error
    assert json.loads(path.read_text())["settings"]["writer"] in range(8)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_resume_needs_the_runs_own_settings(python_run, common, capsys):
    assert train.main([*common, "--output-dir", str(python_run)]) == 2
    assert "already holds a run: add --resume" in capsys.readouterr().err
    changed = [*common, "--output-dir", str(python_run), "--resume", "--lr", "0.01"]
    assert train.main(changed) == 2
    assert "--lr 0.002 (now 0.01)" in capsys.readouterr().err


def test_a_run_saved_before_a_setting_existed_resumes_with_it_off(python_run, common, capsys, tmp_path):
    run = shutil.copytree(python_run, tmp_path / "run")
    saved = json.loads((run / "run_args.json").read_text())
    del saved["settings"]["balance_sources"]  # as run_args.json was written before --balance-sources
    (run / "run_args.json").write_text(json.dumps(saved))
    assert train.main([*common, "--output-dir", str(run), "--resume"]) == 0
    assert train.main([*common, "--output-dir", str(run), "--resume", "--balance-sources"]) == 2
    assert "--balance-sources None (now True)" in capsys.readouterr().err


def test_a_list_edited_to_name_other_files_as_many_is_refused(tmp_path):
    """A run's --exclude list now naming one other file in place of one it named: other rows, refused."""
    listing = tmp_path / "exclude.txt"
    listing.write_text("src/notumor/a.jpg\nsrc/notumor/c.jpg\n")
    settings = {"exclude": str(listing), "exclude_files": ["src/notumor/a.jpg", "src/notumor/b.jpg"]}
    with pytest.raises(UsageError, match=r"1 file\(s\) added, 1 dropped"):
        runs.check_lists_unchanged(settings)
    listing.write_text("# reordered, commented: the same files\nsrc/notumor/b.jpg\nsrc/notumor/a.jpg\n")
    runs.check_lists_unchanged(settings)


def test_init_from_starts_every_fold_from_a_trained_models_weights(python_run, common, tmp_path):
    """Fine-tuning from a folder like release/ (float16 shards, a fitted familiarity detector): with a learning rate
    too small to move them, both folds end with its weights rather than random ones, and name it; the detector's
    statistics, which describe the old weights, are not carried over."""
    trained = BrainResNetForImageClassification.from_pretrained(python_run / "fold-0")
    features = trained.config.hidden_sizes[-1]
    trained.set_familiarity(torch.zeros(len(CLASSES), features), torch.eye(features), threshold=1.0)
    release = tmp_path / "release"
    processor = BrainResNetImageProcessor.from_pretrained(python_run / "fold-0")
    hub.save_model_folder(trained, processor, release, half_storage=True)
    out = tmp_path / "fine-tuned"
    argv = [*common, "--output-dir", str(out), "--init-from", str(release), "--epochs", "1", "--lr", "1e-12"]
    assert train.main(argv) == 0
    start = {name: value.float() for name, value in trained.half().state_dict().items()}  # what the shards hold
    for fold in ("fold-0", "fold-1"):
        tuned = BrainResNetForImageClassification.from_pretrained(out / fold)
        assert tuned.config.familiarity_threshold is None
        assert tuned.config.training_info["init_from"] == str(release)
        for name, value in tuned.named_parameters():
            torch.testing.assert_close(value, start[name], atol=1e-6, rtol=0, msg=name)


def test_init_from_refuses_a_model_of_other_classes_or_another_network(python_run, common, tmp_path, capsys):
    other_classes = shutil.copytree(python_run / "fold-0", tmp_path / "other-classes")
    config = json.loads((other_classes / "config.json").read_text())
    config["id2label"] = dict(enumerate(reversed(CLASSES)))
    config["label2id"] = {name: i for i, name in enumerate(reversed(CLASSES))}
    (other_classes / "config.json").write_text(json.dumps(config))
    nowhere = tmp_path / "nowhere"
    cases = [
        ([str(other_classes)], f"its classes {list(reversed(CLASSES))} are not the dataset's {CLASSES}"),
        ([str(python_run / "fold-0"), "--model", "improved"], "its weights do not fit --model's network"),
        ([str(nowhere)], f"train.py: error: --init-from {nowhere}: "),
    ]
    for flags, message in cases:
        assert train.main([*common, "--output-dir", str(tmp_path / "run"), "--init-from", *flags]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--folds", "0,x"], "argument --folds: '0,x': give all, full, fold numbers"),
        (["--protocol", "leaky"], "argument --protocol: invalid choice: 'leaky'"),
        (["--model", "resnet50"], "argument --model: 'resnet50': give one of improved, resnet34"),
        (["--epochs", "0"], "argument --epochs: 0 is out of range: must be at least 1"),
        (["--lr", "fast"], "argument --lr: 'fast' is not a number"),
        (["--push-to-hub", "not a repo id"], "argument --push-to-hub:"),
        (["--push-to-hub", "a/b", "--hub-model-id", "a/c"], "--hub-model-id and --push-to-hub name different repos"),
        (["--ema-decay", "1"], "--ema-decay 1 would keep the initial weights"),
        (["--heal-prob", "0.3"], "--heal-prob and --heal-from go together"),
        (["--heal-from", "release"], "--heal-prob and --heal-from go together"),
        (["--dark-lesion-prob", "0.5"], "--dark-lesion-prob darkens pasted lesions: it needs --paste-prob"),
        (["--geometry-only", "--remap-prob", "0.5"], "--geometry-only leaves intensities alone"),
        (["--geometry-only", "--jitter-scale", "2"], "--geometry-only leaves intensities alone"),
        (["--geometry-only", "--gin-prob", "0.5"], "--geometry-only leaves intensities alone"),
        (["--jitter-scale", "0"], "argument --jitter-scale: 0 is out of range"),
        (["--mix-styles", "1.5"], "argument --mix-styles: 1.5 is out of range"),
    ],
)
def test_bad_flags_fail_with_a_usage_message(flags, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--dataset", "x", "--output-dir", str(tmp_path / "run"), *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_dataset_or_a_file_as_output_dir_fails_cleanly(tmp_path, capsys, monkeypatch):
    assert train.main(["--dataset", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "run")]) == 2
    assert f"train.py: error: --dataset {tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("mine")
    assert train.main(["--dataset", str(tmp_path), "--output-dir", str(tmp_path / "notes.txt")]) == 2
    assert "--output-dir" in capsys.readouterr().err and (tmp_path / "notes.txt").read_text() == "mine"
    # a mistyped relative path is no Hub id to retry (and fall back to a cached dataset of that name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert train.main(["--dataset", "data/brain-tumor-mri-4K", "--output-dir", str(tmp_path / "run")]) == 2
    assert "--dataset data/brain-tumor-mri-4K: no such folder" in capsys.readouterr().err


def test_fold_the_dataset_lacks_fails_cleanly_from_the_command_line(dataset, workdir, env):
    done = run_train(["--dataset", str(dataset), "--output-dir", str(workdir / "bad"), "--folds", "5"], env)
    assert done.returncode == 2
    assert "train.py: error: --folds 5: the dataset has folds 0 to 1" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (workdir / "bad" / "run_args.json").exists()  # a failed start leaves nothing to --resume


def test_a_batch_larger_than_a_fold_fails_before_the_run_is_recorded(dataset, workdir, capsys):
    """Found only once the slices are decoded, but still before run_args.json: the corrected command then starts
    afresh instead of being told to --resume the settings it corrects."""
    out = workdir / "big-batch"
    args = ["--dataset", str(dataset), "--output-dir", str(out), "--epochs", "1", "--image-size", "32"]
    assert train.main([*args, "--batch-size", "100000"]) == 2
    assert "training images, fewer than --batch-size" in capsys.readouterr().err
    assert not (out / "run_args.json").exists()


def write_parquet_dataset(source: Path, dest: Path, drop: list[str]) -> Path:
    import datasets

    split = datasets.load_dataset(str(source), split="train").remove_columns(drop)
    (dest / "data").mkdir(parents=True)
    split.to_parquet(dest / "data" / "train-00000-of-00001.parquet")
    return dest


def test_dataset_without_the_needed_columns_is_refused(dataset, tmp_path):
    unlabelled = write_parquet_dataset(dataset, tmp_path / "unlabelled", drop=["label"])
    with pytest.raises(UsageError, match="has no label column .* make one with prepare_dataset.py"):
        data.load_table(str(unlabelled), "grouped", with_test=False)


@pytest.mark.parametrize("drop", [["fold", "fold_random"], ["fold", "fold_random", "group"]])
def test_dataset_without_folds_gets_prepare_datasets_folds(dataset, tmp_path, drop):
    stripped = write_parquet_dataset(dataset, tmp_path / "stripped", drop=drop)
    original, _ = data.read_parquet_folder(dataset)
    grouped = data.load_table(str(stripped), "grouped", with_test=False)
    random = data.load_table(str(stripped), "random", with_test=False)
    fold, fold_random = folds.assign_folds(grouped.labels, original["train"]["group"])
    assert grouped.folds.tolist() == fold  # the 40 test slices have no near-duplicates: a group each
    assert random.folds.tolist() == fold_random


def test_a_dataset_without_folds_keeps_each_of_its_groups_in_one_fold(dataset, tmp_path):
    """Folds made for a dataset without fold columns (make_folds) keep the rows of a `group` together: the fixture's
    own groups are all single slices, so here consecutive slices of a class are paired into one group."""
    import datasets

    split = datasets.load_dataset(str(dataset), split="train").remove_columns(["fold", "fold_random"])
    split = split.map(lambda row, i: {"group": i // 2}, with_indices=True)  # rows are in class order: pairs of a class
    (tmp_path / "paired" / "data").mkdir(parents=True)
    split.to_parquet(tmp_path / "paired" / "data" / "train-00000-of-00001.parquet")
    table = data.load_table(str(tmp_path / "paired"), "grouped", with_test=False)
    assert len(set(table.folds.tolist())) == 5  # make_folds: prepare_dataset.py's default --folds
    assert all(len(set(table.folds[table.groups == g].tolist())) == 1 for g in np.unique(table.groups))


def test_parquet_reader_matches_datasets(dataset):
    """The pyarrow fallback (the GPU machine may lack `datasets`) reads what load_dataset reads."""
    with_datasets, names = data.read_splits(str(dataset))
    with_pyarrow, pyarrow_names = data.read_parquet_folder(dataset)
    assert names == pyarrow_names == CLASSES
    assert with_datasets["train"] == with_pyarrow["train"]


def test_each_protocol_trains_on_its_own_fold_column(dataset):
    """--protocol grouped reads `fold` (near-duplicates kept together), random reads `fold_random`: the leak-free
    protocol silently trained on the plain folds would report the leaky scores under the honest name."""
    columns = data.read_parquet_folder(dataset)[0]["train"]
    assert columns["fold"] != columns["fold_random"]  # else this test could not tell them apart
    for protocol, column in (("grouped", "fold"), ("random", "fold_random")):
        assert data.load_table(str(dataset), protocol, with_test=False).folds.tolist() == columns[column], protocol


def test_test_split_rows_are_held_out_by_the_full_model_only_and_exclude_reaches_them(dataset, tmp_path):
    """A dataset with a test split (prepare_dataset.py's Training/Testing layout), loaded for --folds all,full: the
    test rows are in no fold, neither trained on nor scored by a fold model, and are exactly the full model's held-out
    rows; an --exclude list leaves out a listed test row as it does a train row."""
    import datasets

    rows = datasets.load_dataset(str(dataset), split="train")
    test_ids = list(range(0, len(rows), 5))  # 8 rows, every class
    train_ids = [i for i in range(len(rows)) if i not in test_ids]
    folder = tmp_path / "with-test"
    (folder / "data").mkdir(parents=True)
    rows.select(train_ids).to_parquet(folder / "data" / "train-00000-of-00001.parquet")
    rows.select(test_ids).to_parquet(folder / "data" / "test-00000-of-00001.parquet")

    table = data.load_table(str(folder), "grouped", with_test=True)
    test_rows = set(range(len(train_ids), len(rows)))
    assert len(table.labels) == len(rows) and (table.folds[sorted(test_rows)] == folds.NO_FOLD).all()
    device_data = data.DeviceData(None, None, torch.from_numpy(table.labels), table)
    for fold in (0, 1):
        trained, held_out = (set(r.tolist()) for r in device_data.indices(fold))
        assert trained and held_out and not (trained | held_out) & test_rows, fold
    trained, held_out = (set(r.tolist()) for r in device_data.indices(runs.FULL))
    assert held_out == test_rows and trained == set(range(len(rows))) - test_rows

    listing = tmp_path / "exclude.txt"
    listing.write_text(f"{rows[train_ids[0]]['file']}\n{rows[test_ids[0]]['file']}\n")  # one train row, one test row
    smaller = data.load_table(str(folder), "grouped", with_test=True, exclude=str(listing))
    assert len(smaller.labels) == len(rows) - 2
    assert (smaller.folds == folds.NO_FOLD).sum() == len(test_ids) - 1


def augmented(images: torch.Tensor, seed: int, **options) -> torch.Tensor:
    """augment() at 64 px after seeding both random streams it draws from, as train.py seeds every epoch."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    return augment(images, 64, **options)


def test_augment_gives_random_views_in_range():
    images = torch.randint(0, 256, (6, 1, 74, 74), dtype=torch.uint8)
    first = augmented(images, seed=0)
    assert torch.equal(first, augmented(images, seed=0))  # reseeding replays it: resuming relies on this
    assert first.shape == (6, 1, 64, 64) and first.dtype == torch.float32
    assert first.min() >= 0 and first.max() <= 1
    assert not torch.equal(first, augment(images, 64))
    still = torch.rand(3, 1, 16, 16)
    assert torch.allclose(gaussian_blur(still, torch.zeros(3)), still, atol=1e-6)


def test_augment_flips_about_half_the_views_left_right():
    """A lesion in the image's left half ends up in the right half of about half the views (the random flip), so
    that a tumour's side tells nothing about its class."""
    views = augmented(brain_slice(1).expand(200, 1, 64, 64), seed=0, geometry_only=True)
    bright = views > 0.9  # the lesion (250 of 255); the brain is 100
    right = bright[..., 32:].sum(dim=(1, 2, 3)) > bright[..., :32].sum(dim=(1, 2, 3))
    assert 60 < int(right.sum()) < 140


def test_geometry_only_views_keep_the_slices_intensities():
    bright = torch.full((8, 1, 74, 74), 200, dtype=torch.uint8)  # one grey level: any change of it is jitter
    level = torch.full((8,), 200 / 255)
    geometric = augmented(bright, seed=2, geometry_only=True)
    assert torch.equal(geometric, augmented(bright, seed=2, geometry_only=True))
    assert torch.allclose(geometric.amax(dim=(1, 2, 3)), level)  # resampled, never brightened or darkened
    jittered = augmented(bright, seed=2)
    assert not torch.allclose(jittered.amax(dim=(1, 2, 3)), level, atol=0.01)


def test_jitter_scale_narrows_and_widens_the_jitter_around_the_recipe():
    images = torch.randint(40, 216, (16, 1, 74, 74), dtype=torch.uint8)
    recipe = augmented(images, seed=3)
    geometric = augmented(images, seed=3, geometry_only=True)  # the same views before any jitter
    near = (augmented(images, seed=3, jitter_scale=0.25) - geometric).abs().mean()
    far = (augmented(images, seed=3, jitter_scale=2.0) - geometric).abs().mean()
    assert near < (recipe - geometric).abs().mean() < far


def test_random_network_contrast_changes_tissue_contrast_but_keeps_the_frame_black():
    torch.manual_seed(0)
    head = torch.zeros(8, 1, 48, 48)
    head[:, :, 8:40, 8:40] = 0.5  # a head on a black frame, with a brighter and a darker tissue inside
    head[:, :, 14:24, 14:24] = 0.9
    head[:, :, 28:36, 20:34] = 0.2
    views = random_network_contrast(head)
    assert views.shape == head.shape and views.min() >= 0 and views.max() <= 1
    assert torch.equal(views[:, :, :4], head[:, :, :4])  # the frame, away from the head's edge, stays black
    bright, middle, dark = views[:, 0, 18, 18], views[:, 0, 12, 30], views[:, 0, 32, 27]
    order_kept = (bright > middle) & (middle > dark)
    assert not order_kept.all()  # some views reorder the tissues' intensities, as another sequence would
    assert not torch.allclose(views[0], views[1])  # each view its own network and mixing weight
    images = torch.randint(0, 256, (6, 1, 74, 74), dtype=torch.uint8)
    assert torch.equal(augmented(images, seed=1), augmented(images, seed=1, gin_prob=0.0))  # off: the same stream


def test_shuffled_quadrants_keep_every_quadrant_and_move_them():
    """--shuffle-prob: each view's quadrants, pixel for pixel, in another order (never their own), drawn after every
    other step, so that the views are those of the recipe, quadrants apart, and off draws nothing."""
    images = torch.randint(0, 256, (64, 1, 74, 74), dtype=torch.uint8)

    def quadrants(x):
        return [x[..., rows, cols] for rows in (slice(0, 32), slice(32, 64)) for cols in (slice(0, 32), slice(32, 64))]

    recipe, shuffled = augmented(images, seed=4), augmented(images, seed=4, shuffle_prob=1.0)
    moved = 0
    for before, after in zip(recipe, shuffled, strict=True):
        parts, placed = quadrants(before), quadrants(after)
        order = [next(i for i, part in enumerate(parts) if torch.equal(part, piece)) for piece in placed]
        assert sorted(order) == [0, 1, 2, 3] and order != [0, 1, 2, 3]
        moved += sum(i != j for j, i in enumerate(order))
    assert moved > 64 * 2  # not always the same swap of two
    half = augmented(images, seed=4, shuffle_prob=0.5)
    assert 10 < sum(torch.equal(a, b) for a, b in zip(half, recipe, strict=True)) < 54
    assert torch.equal(augmented(images, seed=4, shuffle_prob=0.0), recipe)
    assert shuffle_quadrants(recipe).shape == recipe.shape


def test_style_mixing_gives_slices_a_mixture_of_another_slices_statistics_and_keeps_their_patterns():
    torch.manual_seed(0)
    styles = torch.arange(32.0).view(32, 1, 1, 1)
    features = torch.randn(32, 4, 6, 6) * (1 + styles) + 10 * styles  # each slice its own mean and spread
    assert torch.allclose(mix_styles(features, 0.0), features, atol=1e-4)  # off: the slices as they were

    torch.manual_seed(1)
    mixed = mix_styles(features, 1.0)

    def standardised(maps):
        return (maps - maps.mean(dim=(2, 3), keepdim=True)) / maps.std(dim=(2, 3), keepdim=True)

    assert torch.allclose(standardised(mixed), standardised(features), atol=1e-3)  # the pattern (anatomy) is kept
    own, now = features.mean(dim=(2, 3)), mixed.mean(dim=(2, 3))
    assert (now >= own.amin(dim=0) - 1e-3).all() and (now <= own.amax(dim=0) + 1e-3).all()  # between slices'
    moved = ((now - own).abs() > 5).all(dim=1)  # by at least half the distance to the nearest other slice
    assert moved.sum() >= 8


def test_style_mixing_run_trains_otherwise_and_saves_the_plain_model(common, tmp_path, capsys):
    from safetensors.torch import load_file

    mixed, plain = tmp_path / "mixed", tmp_path / "plain"
    assert train.main([*common, "--folds", "0", "--mix-styles", "1", "--output-dir", str(mixed)]) == 0
    assert train.main([*common, "--folds", "0", "--output-dir", str(plain)]) == 0
    first_losses = [json.loads((run / "log.jsonl").read_text().splitlines()[0])["train_loss"] for run in (mixed, plain)]
    assert first_losses[0] != first_losses[1]
    assert (
        load_file(mixed / "fold-0" / "model.safetensors").keys()
        == load_file(plain / "fold-0" / "model.safetensors").keys()
    )
    assert json.loads((mixed / "fold-0" / "config.json").read_text())["training_info"]["mix_styles"] == 1.0
    # the saved model is the plain network: its held-out accuracy as reloaded is the one the run logged
    report = tmp_path / "release.json"
    assert (
        make_release.main([str(mixed / "fold-0"), "--output", str(tmp_path / "release"), "--report", str(report)]) == 0
    )
    assert json.loads(report.read_text())["held_out_scores_uncalibrated"]["accuracy"] == pytest.approx(
        read_results(mixed)["folds"]["0"]["accuracy"]
    )
    assert train.main([*common, "--folds", "0", "--output-dir", str(mixed), "--resume"]) == 2
    assert "--mix-styles 1.0 (now 0.0)" in capsys.readouterr().err


def test_intensity_remap_changes_contrast_but_not_background_or_shape():
    torch.manual_seed(0)
    ramp = torch.linspace(0, 1, 61).expand(8, 1, 61, 61).clone()  # every intensity level, the curves' knots too
    ramp[:, :, :8] = 0  # a black border, like the background around a cropped brain
    remapped = remap_intensity(ramp)
    assert remapped.shape == ramp.shape and remapped.min() >= 0 and remapped.max() <= 1
    assert torch.equal(remapped[:, :, :8], ramp[:, :, :8])  # background stays black: framing is not a cue
    assert torch.allclose(remapped.amax(dim=(1, 2, 3)), torch.ones(8))  # the full range is used
    steps = remapped[:, 0, 30].diff(dim=1)
    assert ((steps > 1e-6).any(dim=1) & (steps < -1e-6).any(dim=1)).any()  # curves can reverse a contrast
    assert not torch.allclose(remapped[0], remapped[1])  # each image has its own curve
    images = torch.randint(0, 256, (6, 1, 74, 74), dtype=torch.uint8)
    plain = augmented(images, seed=1)
    assert torch.equal(plain, augmented(images, seed=1, remap_prob=0.0))  # off: the same random stream as before
    assert not torch.equal(plain, augmented(images, seed=1, remap_prob=1.0))


def test_contrast_inversion_reverses_the_head_and_keeps_the_background_black():
    head = torch.zeros(1, 1, 48, 48)
    head[:, :, 8:40, 8:40] = torch.linspace(0.2, 1.0, 32)  # a head: tissue from dark to bright, on black
    inverted = invert_head_contrast(head)
    assert inverted.min() >= 0 and inverted.max() <= 1
    assert torch.equal(inverted[:, :, :5], torch.zeros(1, 1, 5, 48))  # the frame stays black: framing is no cue
    row = inverted[0, 0, 24, 12:36]  # inside the head, away from its soft edge
    assert torch.allclose(row, 1 - head[0, 0, 24, 12:36])  # the dark tissue is now the bright one, and so on
    images = torch.randint(0, 256, (6, 1, 74, 74), dtype=torch.uint8)
    plain = augmented(images, seed=1)
    assert torch.equal(plain, augmented(images, seed=1, invert_prob=0.0))  # off: the same random stream as before
    assert not torch.equal(plain, augmented(images, seed=1, invert_prob=1.0))


def brain_slice(lesion_side: int = 0, centre_column: float = 31.5, size: int = 64) -> torch.Tensor:
    """A uint8 (1, size, size) slice: a grey ellipse "brain" around `centre_column`, with a bright lesion in the
    image's left (lesion_side 1) or right (-1) half, or none (0)."""
    rows, columns = torch.meshgrid(
        torch.arange(float(size)) - 31.5, torch.arange(float(size)) - centre_column, indexing="ij"
    )
    image = torch.where((rows / 28) ** 2 + (columns / 22) ** 2 < 1, 100.0, 0.0)
    if lesion_side:
        lesion = (rows + 6) ** 2 + (columns + 12 * lesion_side) ** 2 < 36  # 12 px off the midline, 6 up
        image = torch.where(lesion, 250.0, image)
    return image.to(torch.uint8).unsqueeze(0)


def test_tumour_side_is_the_half_brighter_than_its_mirror_image_of_symmetric_slices_only():
    slices = torch.stack([brain_slice(1), brain_slice(-1), brain_slice(1, centre_column=18)])
    # the last, off-centre, is not left-right symmetric (like a sagittal slice): no half of it makes a brain
    assert tumour_sides(slices).tolist() == [1, -1, 0]
    assert tumour_sides(slices, chunk=1).tolist() == [1, -1, 0]


def test_mirror_hemispheres_makes_healthy_and_bilateral_views_equally_often():
    batch = 400
    images = torch.stack([brain_slice(1), brain_slice(-1), brain_slice(1, centre_column=18), brain_slice(-1)] * 100)
    labels = torch.tensor([0, 1, 0, 3] * 100)  # glioma, meningioma, glioma, pituitary
    sides = torch.tensor([1, -1, 0, 0] * 100, dtype=torch.int8)  # as DeviceData.find_tumour_sides leaves them
    healthy = brain_slice(0)
    torch.manual_seed(0)
    views, new_labels = mirror_hemispheres(images, labels, sides, healthy_label=2, prob=1.0)
    mirrored = sides != 0
    assert torch.equal(views[~mirrored], images[~mirrored]) and torch.equal(new_labels[~mirrored], labels[~mirrored])
    assert torch.equal(views[mirrored], views[mirrored].flip(-1))  # one half and its mirror image
    made_healthy = mirrored & (new_labels == 2)
    assert torch.equal(views[made_healthy], healthy.expand(int(made_healthy.sum()), 1, 64, 64))  # lesion gone
    bilateral = mirrored & (new_labels != 2)
    assert torch.equal(new_labels[bilateral], labels[bilateral])  # the tumour's half keeps the tumour's label
    assert (views[bilateral] == 250).sum(dim=(1, 2, 3)).min() == 2 * (images[0] == 250).sum()  # lesion on both sides
    assert abs(int(made_healthy.sum()) - batch // 4) < 30  # half the 200 mirrored rows each way
    unchanged = mirror_hemispheres(images, labels, sides, healthy_label=2, prob=0.0)
    assert torch.equal(unchanged[0], images) and torch.equal(unchanged[1], labels)


def test_paste_lesions_gives_healthy_slices_a_tumour_slices_lesion_and_label():
    images = torch.stack([brain_slice(0), brain_slice(-1), brain_slice(0), brain_slice(0)] * 50)
    labels = torch.tensor([2, 1, 2, 3] * 50)  # healthy, meningioma with a lesion on the right, healthy, pituitary
    sides = torch.tensor([0, -1, 0, 0] * 50, dtype=torch.int8)
    torch.manual_seed(0)
    pasted, new_labels = paste_lesions(images, labels, sides, healthy_label=2, prob=0.5)
    healthy = labels == 2
    given = healthy & (new_labels != 2)
    assert torch.equal(pasted[~given], images[~given]) and torch.equal(new_labels[~healthy], labels[~healthy])
    assert torch.equal(pasted[given], brain_slice(-1).expand(int(given.sum()), 1, 64, 64))  # the lesion, in place
    assert (new_labels[given] == 1).all() and 30 < int(given.sum()) < 70  # about half of the 100 healthy slices
    no_donor = paste_lesions(images, labels, torch.zeros_like(sides), healthy_label=2, prob=1.0)
    assert torch.equal(no_donor[0], images) and torch.equal(no_donor[1], labels)  # no tumour slice: unchanged


def test_dark_lesions_are_subtracted_where_bright_ones_are_added():
    healthy, tumour = brain_slice(0), brain_slice(-1)
    images = torch.stack([healthy, tumour] * 100)
    labels = torch.tensor([2, 1] * 100)
    sides = torch.tensor([0, -1] * 100, dtype=torch.int8)
    lesion = tumour.float() - healthy.float()
    torch.manual_seed(0)
    pasted, new_labels = paste_lesions(images, labels, sides, healthy_label=2, prob=1.0, dark_prob=0.5)
    dark = (healthy.float() - lesion).clamp(min=0).to(torch.uint8)
    is_dark = (pasted[labels == 2] == dark).all(dim=(1, 2, 3))
    is_bright = (pasted[labels == 2] == tumour).all(dim=(1, 2, 3))
    assert (is_dark | is_bright).all() and 30 < int(is_dark.sum()) < 70  # about half of the 100 pasted lesions
    assert (new_labels == 1).all()  # dark or bright, a pasted lesion is the donor's tumour


def test_heal_lesions_makes_half_the_lesions_healthy_tissue_and_fills_as_many_regions_that_keep_their_label():
    tumours = [brain_slice(side, centre_column=18) for side in (1, -1)]  # asymmetric, lesions 24 px apart
    images = torch.stack([*tumours, brain_slice(0)] * 100)
    labels = torch.tensor([0, 1, 2] * 100)  # glioma, meningioma, healthy
    lesions = images == 250  # as DeviceData.find_lesion_masks marks them
    torch.manual_seed(0)
    healed, new_labels = heal_lesions(images, labels, lesions, healthy_label=2, prob=1.0)
    made_healthy = new_labels != labels
    assert (labels[made_healthy] != 2).all() and 70 < int(made_healthy.sum()) < 130  # half of the 200 tumours
    filled = healed[lesions & made_healthy.view(-1, 1, 1, 1)].float()
    assert filled.max() <= 100 and filled.mean() > 95  # no bright lesion left: grey tissue (darker at the brain's edge)
    unhealed = ~made_healthy.view(-1, 1, 1, 1)
    assert torch.equal(healed[lesions & unhealed], images[lesions & unhealed])  # a label kept, its tumour stays
    changed = healed != images
    decoy_region = (lesions[0] | lesions[1]).expand_as(images)
    assert not changed[~lesions & ~decoy_region].any()  # filled: a lesion, or another slice's lesion region only
    for rows in (labels == 0, labels == 1, labels == 2):
        assert (changed & ~lesions)[rows & ~made_healthy].flatten(1).any(1).float().mean() > 0.3  # decoys
    for unchanged in (
        heal_lesions(images, labels, lesions, healthy_label=2, prob=0.0),
        heal_lesions(images, labels, torch.zeros_like(lesions), healthy_label=2, prob=1.0),  # no slice has a lesion
    ):
        assert torch.equal(unchanged[0], images) and torch.equal(unchanged[1], labels)


def test_lesions_are_marked_on_tumour_slices_too_asymmetric_to_mirror_only(dataset, tiny_config):
    table = data.load_table(str(dataset), "grouped", with_test=False)
    asymmetric = np.arange(len(table.labels)) % 2 == 0
    images = torch.stack([brain_slice(1, centre_column=18) if a else brain_slice(1) for a in asymmetric])
    device_data = data.DeviceData(images, images, torch.from_numpy(table.labels), table)
    torch.manual_seed(0)  # the model's classes in another order than the dataset's: marked by name
    model = BrainResNetForImageClassification(engine.model_config(str(tiny_config), CLASSES[::-1])).eval()
    device_data.find_lesion_masks(model, BrainResNetImageProcessor(), 32)
    marked = device_data.lesion_masks.flatten(1).any(1).numpy()
    assert device_data.lesion_masks.shape == images.shape
    assert not marked[~asymmetric | (table.labels == CLASSES.index("notumor"))].any()
    assert marked[asymmetric & (table.labels != CLASSES.index("notumor"))].all()
    head = F.max_pool2d((images > data.BACKGROUND_LEVEL).float(), 9, 1, 4) > 0
    assert not (device_data.lesion_masks & ~head).any()
    model.config.id2label = {0: "tumor", 1: "notumor", 2: "other", 3: "more"}
    with pytest.raises(UsageError, match="--heal-from's model must know the dataset's classes"):
        device_data.find_lesion_masks(model, BrainResNetImageProcessor(), 32)


def test_heal_run_records_the_model_that_marked_the_lesions(python_run, common, tmp_path):
    out = tmp_path / "healed"
    marker = python_run / "fold-1"  # trained on fold 0, which this run trains on too: it holds out fold 1 only
    argv = [*common, "--folds", "1", "--output-dir", str(out), "--heal-prob", "0.5", "--heal-from", str(marker)]
    assert train.main(argv) == 0
    settings = read_results(out)["args"]["settings"]
    assert settings["heal_prob"] == 0.5 and settings["heal_from"] == str(marker.resolve())  # the same however spelled
    assert (out / "fold-1" / "model.safetensors").exists()


def test_mirroring_needs_the_lateral_tumour_and_healthy_classes(dataset):
    table = data.load_table(str(dataset), "grouped", with_test=False)
    images = brain_slice(1).expand(len(table.labels), 1, 64, 64)  # every row: a lesion in the left half
    device_data = data.DeviceData(images, images, torch.from_numpy(table.labels), table)
    device_data.find_tumour_sides()
    assert device_data.healthy_label == CLASSES.index("notumor")
    lateral = np.isin(table.labels, [CLASSES.index("glioma"), CLASSES.index("meningioma")])
    assert device_data.tumour_sides.tolist() == np.where(lateral, 1, 0).tolist()  # pituitary and healthy: never
    table.class_names = ["tumor", "notumor", "other", "more"]
    with pytest.raises(UsageError, match="--mirror-prob and --paste-prob need the classes glioma, meningioma"):
        data.DeviceData(images, images, torch.from_numpy(table.labels), table).find_tumour_sides()


def test_source_mean_gap_is_the_spread_of_each_classs_source_means():
    features = torch.tensor([[0.0, 0.0], [2.0, 0.0], [4.0, 0.0], [0.0, 6.0], [1.0, 1.0], [9.0, 9.0]])
    labels = torch.tensor([0, 0, 0, 0, 1, 2])
    sources = torch.tensor([0, 0, 1, 2, 0, 1])
    # Class 0: source means (1, 0), (4, 0), (0, 6) around (5/3, 2); squared distances summed over both features,
    # halved (per feature), averaged over the 3 sources. Classes 1 and 2 have one source each: left out.
    centre = torch.tensor([5 / 3, 2.0])
    means = torch.tensor([[1.0, 0.0], [4.0, 0.0], [0.0, 6.0]])
    expected = ((means - centre) ** 2).mean(dim=1).mean()
    assert source_mean_gap(features, labels, sources, 3, 3) == pytest.approx(expected.item())
    same_means = torch.tensor([[1.0, 5.0], [3.0, 1.0], [2.0, 3.0], [2.0, 3.0]])
    assert source_mean_gap(same_means, torch.zeros(4, dtype=torch.long), torch.tensor([0, 0, 1, 2]), 1, 3) == 0
    assert source_mean_gap(features, labels, torch.zeros(6, dtype=torch.long), 3, 3) == 0  # one source per class


def test_matching_source_means_makes_features_hide_the_source_but_not_the_class():
    """On inputs that carry class and source (each in noise), an encoder trained for the class keeps the source
    readable by a fresh probe of each class; trained with the penalty as well, it keeps the class and hides the
    source."""
    generator = torch.Generator().manual_seed(0)
    n = 512
    labels, sources = torch.randint(0, 2, (n,), generator=generator), torch.randint(0, 2, (n,), generator=generator)
    x = torch.stack([labels, sources], dim=1).float() + 0.5 * torch.randn(n, 2, generator=generator)

    def fit(modules, loss_of, steps=300):
        optimizer = torch.optim.Adam([p for m in modules for p in m.parameters()], lr=1e-2)
        for _ in range(steps):
            optimizer.zero_grad()
            loss_of().backward()
            optimizer.step()

    def readable(weight: float) -> tuple[float, float]:
        torch.manual_seed(0)
        encoder, classifier, probe = torch.nn.Linear(2, 8), torch.nn.Linear(8, 2), torch.nn.Linear(8, 4)
        penalty = lambda: weight * source_mean_gap(encoder(x), labels, sources, 2, 2)  # noqa: E731
        fit([encoder, classifier], lambda: F.cross_entropy(classifier(encoder(x)), labels) + penalty())
        features = encoder(x).detach()
        source_logits = lambda: probe(features).view(n, 2, 2)[torch.arange(n), labels]  # noqa: E731
        fit([probe], lambda: F.cross_entropy(source_logits(), sources))
        class_accuracy = (classifier(features).argmax(1) == labels).float().mean().item()
        return class_accuracy, (source_logits().argmax(1) == sources).float().mean().item()

    (plain_class, plain_source), (matched_class, matched_source) = readable(0.0), readable(10.0)
    assert plain_source > 0.8 and matched_source < 0.62
    assert matched_class > plain_class - 0.02


def test_match_sources_trains_on_the_source_column_and_refuses_a_dataset_of_one_source(
    dataset, common, tmp_path, capsys, monkeypatch
):
    import datasets

    seen = []

    def spy(features, labels, sources, num_classes, num_sources):
        seen.append((features.shape, sources.unique().tolist(), num_classes, num_sources))
        return source_mean_gap(features, labels, sources, num_classes, num_sources)

    monkeypatch.setattr(engine, "source_mean_gap", spy)
    out = tmp_path / "matched"
    assert train.main([*common, "--output-dir", str(out), "--match-sources", "1"]) == 0  # br35h and figshare
    assert len(seen) == 2 * 3 * (PER_CLASS * len(CLASSES) // FOLDS // 8)  # every step of 3 epochs x 2 folds
    assert all(shape == (8, TINY_CONFIG["hidden_sizes"][-1]) and n == [4, 2] for shape, _, *n in seen)
    assert {source for _, sources, *_ in seen for source in sources} == {0, 1}
    assert check_cv_results(out)["args"]["settings"]["match_sources"] == 1.0
    for fold in ("fold-0", "fold-1"):
        check_model_folder(out / fold)
        # a model's config says how it was trained: the penalty is part of its recipe
        assert json.loads((out / fold / "config.json").read_text())["training_info"]["match_sources"] == 1.0

    one_source = tmp_path / "one-source"
    split = datasets.load_dataset(str(dataset), split="train").remove_columns("source")
    (one_source / "data").mkdir(parents=True)
    split.add_column("source", ["figshare"] * len(split)).to_parquet(one_source / "data" / "train.parquet")
    single = [*common, "--dataset", str(one_source), "--output-dir", str(tmp_path / "single"), "--match-sources", "1"]
    assert train.main(single) == 2
    assert "--match-sources needs a `source` column naming 2 or more sources; found ['figshare']" in (
        capsys.readouterr().err
    )


def test_group_weights_climb_towards_the_worst_cell_and_leave_empty_cells_out():
    weights = GroupWeights(torch.tensor([True, True, False, True]), step_size=0.5)
    per_slice = torch.tensor([0.2, 0.4, 1.5, 0.3], requires_grad=True)
    groups = torch.tensor([0, 0, 1, 3])
    loss = weights.loss(per_slice, groups)
    # One exponentiated-gradient step from uniform thirds: cell means 0.3, 1.5, 0.3; cell 2 has no rows.
    expected = torch.tensor([1.0, np.exp(0.5 * 1.2), 0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(weights.weights, expected / expected.sum())
    loss.backward()
    share = weights.weights.float()
    # d loss / d slice = its cell's weight / the cell's slices in the batch
    torch.testing.assert_close(per_slice.grad, torch.stack([share[0] / 2, share[0] / 2, share[1], share[3]]))
    for _ in range(30):
        weights.loss(per_slice.detach(), groups)
    assert weights.weights[1] > 0.99 and weights.weights[2] == 0


def test_group_weights_move_alike_on_every_process_and_round_trip():
    """Each process passes its batch's cell sums and counts through `reduce` (a sum over processes): both update
    from the combined cell means, so their weights stay equal although their slices differ."""
    first, second = (GroupWeights(torch.tensor([True, True]), step_size=1.0) for _ in range(2))
    batches = [(torch.tensor([1.0, 0.0]), torch.tensor([0, 1])), (torch.tensor([3.0, 2.0]), torch.tensor([0, 0]))]

    def totals(per_slice, groups):
        return torch.stack([torch.zeros(2).index_add(0, groups, per_slice), torch.bincount(groups, minlength=2)])

    both = sum(totals(*batch) for batch in batches)
    for weights, batch in zip((first, second), batches, strict=True):
        weights.loss(*batch, reduce=lambda _: both)
    torch.testing.assert_close(first.weights, second.weights)  # cell means 2.0 and 0.0 on both
    torch.testing.assert_close(first.weights[0] / first.weights[1], torch.tensor(np.exp(2.0), dtype=torch.float64))

    restored = GroupWeights(torch.tensor([True, True]), step_size=1.0)
    restored.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert torch.equal(restored.weights, first.weights)
    with pytest.raises(ValueError, match="3 groups, expected 2"):
        restored.load_state_dict({"weights": [0.2, 0.3, 0.5]})


def test_group_dro_run_resumes_with_its_group_weights(common, tmp_path, monkeypatch):
    """A run stopped after its first epoch keeps the adversary's weights in its checkpoint; resumed, it replays the
    uninterrupted run's weights epoch by epoch. Only the cells with training rows (the fixture's figshare tumours
    and Br35H healthy slices: 4 of the 8 (class, source) cells) get weight."""
    args = [*common, "--folds", "0", "--group-dro", "0.5"]
    assert train.main([*args, "--output-dir", str(tmp_path / "whole")]) == 0
    whole = [json.loads(line)["group_weights"] for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]

    requests = iter([True])
    monkeypatch.setattr(engine.GracefulStop, "requested", lambda self, accelerator: next(requests, False))
    stopped = tmp_path / "stopped"
    assert train.main([*args, "--output-dir", str(stopped)]) == 128 + signal.SIGTERM
    (progress,) = (stopped / "fold-0" / "checkpoints").glob("epoch-*/progress.json")
    assert json.loads(progress.read_text())["group_weights"]["weights"] == whole[0]
    assert train.main([*args, "--output-dir", str(stopped), "--resume"]) == 0
    resumed = [json.loads(line)["group_weights"] for line in (stopped / "log.jsonl").read_text().splitlines()]
    assert resumed == whole and len(whole) == 3
    # cells are class * 2 + source (br35h 0, figshare 1): glioma, meningioma and pituitary of figshare, Br35H healthy
    assert [weight > 0 for weight in whole[-1]] == [False, True, False, True, True, False, False, True]
    assert read_results(stopped)["args"]["settings"]["group_dro"] == 0.5
    assert json.loads((stopped / "fold-0" / "config.json").read_text())["training_info"]["group_dro"] == 0.5


def test_ema_run_saves_the_weight_average_and_resumes_it(common, tmp_path, monkeypatch):
    """With --ema-decay the fold folder holds the running average of the weights, not the last ones, and the log
    scores both; the same run without it trains the same last weights. A run stopped after its first epoch keeps
    the average in its checkpoint and, resumed, saves exactly the uninterrupted run's model."""
    from safetensors.torch import load_file

    args = [*common, "--folds", "0", "--ema-decay", "0.5"]
    whole, plain = tmp_path / "whole", tmp_path / "plain"
    assert train.main([*args, "--output-dir", str(whole)]) == 0
    assert train.main([*common, "--folds", "0", "--output-dir", str(plain)]) == 0

    def log(run):
        return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]

    assert [record["eval_accuracy_raw"] for record in log(whole)] == [record["eval_accuracy"] for record in log(plain)]
    averaged, last = (load_file(run / "fold-0" / "model.safetensors") for run in (whole, plain))
    assert averaged.keys() == last.keys()
    assert not all(torch.equal(averaged[name], last[name]) for name in averaged)
    info = json.loads((whole / "fold-0" / "config.json").read_text())["training_info"]
    assert (
        info["ema_decay"] == 0.5
        and "ema_decay" not in json.loads((plain / "fold-0" / "config.json").read_text())["training_info"]
    )

    requests = iter([True])
    monkeypatch.setattr(engine.GracefulStop, "requested", lambda self, accelerator: next(requests, False))
    stopped = tmp_path / "stopped"
    assert train.main([*args, "--output-dir", str(stopped)]) == 128 + signal.SIGTERM
    assert list((stopped / "fold-0" / "checkpoints").glob(f"epoch-*/{engine.AVERAGED_WEIGHTS}"))
    assert train.main([*args, "--output-dir", str(stopped), "--resume"]) == 0
    resumed = load_file(stopped / "fold-0" / "model.safetensors")
    assert all(torch.equal(resumed[name], averaged[name]) for name in averaged)
    assert log(stopped)[-1]["eval_accuracy"] == log(whole)[-1]["eval_accuracy"]


def test_the_lr_follows_one_warmup_and_cosine_over_every_step_of_a_fold(python_run):
    """The schedule steps once per optimisation step over the fold's epochs x steps: warm-up over --warmup of the
    steps to --lr, then a cosine down to 0 at the last step (the log records the lr after each epoch)."""
    results = read_results(python_run)
    log = [json.loads(line) for line in (python_run / "log.jsonl").read_text().splitlines()]
    peak, epochs, batch = 2e-3, 3, 8  # the recipe's --lr and --warmup 0.05; `common`'s epochs and batch
    for fold in ("0", "1"):
        steps_per_epoch = results["folds"][fold]["num_train"] // batch
        total = epochs * steps_per_epoch
        warmup = round(0.05 * total)
        for record in (r for r in log if str(r["fold"]) == fold):
            step = record["epoch"] * steps_per_epoch
            progress = (step - warmup) / (total - warmup)
            expected = peak * step / warmup if step < warmup else peak * 0.5 * (1 + np.cos(np.pi * progress))
            assert record["lr"] == pytest.approx(expected, abs=1e-9), (fold, record["epoch"])
        assert record["lr"] == pytest.approx(0, abs=1e-12)


def test_the_seed_sets_the_weights_and_the_same_seed_repeats_them(common, tmp_path):
    """--seed is the run's: one seed trains the same model twice, another seed another model (the summary pairs folds
    by seed, so runs with different seeds must differ)."""
    from safetensors.torch import load_file

    weights = {}
    for name, seed in (("first", 1), ("again", 1), ("other", 2)):
        out = tmp_path / name
        argv = [*common, "--folds", "0", "--epochs", "1", "--seed", str(seed), "--output-dir", str(out)]
        assert train.main(argv) == 0
        weights[name] = load_file(out / "fold-0" / "model.safetensors")
    assert all(torch.equal(weights["first"][k], weights["again"][k]) for k in weights["first"])
    assert not all(torch.equal(weights["first"][k], weights["other"][k]) for k in weights["first"])


def test_every_epoch_visits_the_training_rows_in_a_new_order_that_the_seed_repeats(common, tmp_path, monkeypatch):
    """Each epoch is one pass over the fold's training rows in a fresh random order (SGD on batches of one class
    run would bias every step), seeded per epoch so a resumed run draws the order the uninterrupted one drew."""
    orders = []

    def recording_epoch(*args, **kwargs):
        orders.append(args[7].clone())  # train_epoch's `order`
        return real_epoch(*args, **kwargs)

    real_epoch = train.train_epoch
    monkeypatch.setattr(train, "train_epoch", recording_epoch)
    argv = [*common, "--folds", "0", "--output-dir", str(tmp_path / "run")]
    assert train.main(argv) == 0
    first, second, third = orders
    assert torch.equal(first.sort().values, torch.arange(len(first)))  # a permutation: every row once
    assert not torch.equal(first, torch.arange(len(first)))
    assert not torch.equal(first, second) and not torch.equal(second, third)
    orders.clear()
    assert train.main([*argv[:-1], str(tmp_path / "again")]) == 0
    assert all(torch.equal(a, b) for a, b in zip(orders, (first, second, third), strict=True))


def test_an_ema_of_almost_no_memory_saves_the_last_weights(python_run, common, tmp_path):
    """The average follows the weights at every step: with a decay near 0 it is the last step's weights (and
    BatchNorm statistics), those of the same fold trained without --ema-decay, not the weights it started from."""
    from safetensors.torch import load_file

    out = tmp_path / "ema"
    assert train.main([*common, "--folds", "0", "--ema-decay", "1e-9", "--output-dir", str(out)]) == 0
    averaged = load_file(out / "fold-0" / "model.safetensors")
    last = load_file(python_run / "fold-0" / "model.safetensors")  # the same fold, seed and steps, no average
    assert averaged.keys() == last.keys()
    for name, tensor in averaged.items():
        torch.testing.assert_close(tensor, last[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_run_stopped_between_its_periodic_checkpoints_still_saves_one(common, tmp_path, monkeypatch, capsys):
    """--save-every N (10 on a GPU) checkpoints every N epochs and also whenever a signal stops the run: stopped after
    epoch 1 of 3 with --save-every 5, the run resumes after epoch 1 rather than from the start."""
    args = [*common, "--folds", "0", "--save-every", "5", "--output-dir", str(tmp_path / "run")]
    requests = iter([True])
    monkeypatch.setattr(engine.GracefulStop, "requested", lambda self, accelerator: next(requests, False))
    assert train.main(args) == 128 + signal.SIGTERM
    (progress,) = (tmp_path / "run" / "fold-0" / "checkpoints").glob("epoch-*/progress.json")
    assert json.loads(progress.read_text())["epoch"] == 1
    assert train.main([*args, "--resume"]) == 0
    assert "fold-0: resuming after epoch 1" in capsys.readouterr().out
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log] == [1, 2, 3]


def test_an_untyped_tumours_loss_asks_for_any_tumour_class_and_a_typed_slices_is_unchanged():
    logits = torch.tensor([[2.0, 0.5, 1.0, -1.0], [0.3, 0.1, 3.0, 0.2], [1.0, 1.0, 1.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, data.ANY_TUMOUR, 3])
    healthy = 2

    losses = engine.slice_losses(logits, labels, 0.1, healthy)

    probs = logits.softmax(dim=1)
    assert losses[1].item() == pytest.approx(-torch.log(1 - probs[1, healthy]).item(), rel=1e-6)
    typed = F.cross_entropy(logits[[0, 2]], labels[[0, 2]], label_smoothing=0.1, reduction="none")
    assert torch.allclose(losses[[0, 2]], typed)
    losses[1].backward()
    gradient = logits.grad[1]  # lowers the healthy logit, raises every tumour class in proportion to its probability
    assert gradient[healthy] > 0 and (gradient[[0, 1, 3]] < 0).all()
    assert torch.allclose(gradient[[0, 1, 3]] / probs[1, [0, 1, 3]], gradient[0] / probs[1, 0])


def test_excluded_slices_leave_training_and_scores_and_the_rest_keep_their_folds(dataset, common, tmp_path, capsys):
    table = data.load_table(str(dataset), "grouped", with_test=False)
    files = data.read_splits(str(dataset))[0]["train"]["file"]
    dropped = [0, 1, len(files) - 1]
    listing = tmp_path / "exclude.txt"
    listing.write_text("# labelled healthy, shows a mass\n" + "\n".join(files[i] for i in dropped) + "\n")
    kept = np.setdiff1d(np.arange(len(files)), dropped)
    smaller = data.load_table(str(dataset), "grouped", with_test=False, exclude=str(listing))
    assert np.array_equal(smaller.labels, table.labels[kept]) and np.array_equal(smaller.folds, table.folds[kept])

    out = tmp_path / "run"
    assert train.main([*common, "--output-dir", str(out), "--exclude", str(listing)]) == 0
    for fold, entry in read_results(out)["folds"].items():
        assert entry["num_eval"] == (smaller.folds == int(fold)).sum()
        assert entry["num_train"] == (smaller.folds != int(fold)).sum()
    info = json.loads((out / "fold-0" / "config.json").read_text())["training_info"]
    assert info["exclude"] == str(listing)
    report = tmp_path / "release.json"  # make_release reads the same rows the run held out
    assert make_release.main([str(out / "fold-0"), "--output", str(tmp_path / "release"), "--report", str(report)]) == 0
    assert json.loads(report.read_text())["held_out_scores"]["slices"] == (smaller.folds == 0).sum()

    settings = json.loads((out / "run_args.json").read_text())["settings"]
    assert settings["exclude_files"] == sorted(files[i] for i in dropped)  # what the list named when it trained
    listing.write_text(f"{files[0]}\n")  # the list edited after training: the run's held-out rows are no longer it
    assert make_release.main([str(out / "fold-0"), "--output", str(tmp_path / "again")]) == 2
    assert "has changed since it trained (0 file(s) added, 2 dropped" in capsys.readouterr().err
    assert train.main([*common, "--output-dir", str(out), "--exclude", str(listing), "--resume"]) == 2
    listing.write_text("\n".join(files[i] for i in dropped) + "\n")

    untyped = tmp_path / "untyped.txt"  # a slice cannot be both left out and trained as a tumor
    untyped.write_text(f"{files[0]}\n")
    with pytest.raises(UsageError, match="both name 1 file"):
        data.load_table(str(dataset), "grouped", with_test=False, untyped_tumors=str(untyped), exclude=str(listing))

    listing.write_text("src/notumor/not-a-slice.jpg\n")
    assert train.main([*common, "--output-dir", str(tmp_path / "typo"), "--exclude", str(listing)]) == 2
    assert "--exclude" in (err := capsys.readouterr().err) and "not-a-slice.jpg" in err


def test_untyped_tumours_train_as_tumours_and_are_left_out_of_the_held_out_scores(dataset, common, tmp_path, capsys):
    table = data.load_table(str(dataset), "grouped", with_test=False)
    healthy = np.flatnonzero(table.labels == table.class_names.index("notumor"))
    listed = [data.read_splits(str(dataset))[0]["train"]["file"][i] for i in healthy[:3]]
    listing = tmp_path / "untyped.txt"
    listing.write_text("# enhancing lesions, labelled healthy\n" + "\n".join(listed) + "\n")
    marked = data.load_table(str(dataset), "grouped", with_test=False, untyped_tumors=str(listing))
    assert (marked.labels == data.ANY_TUMOUR).sum() == 3
    assert np.array_equal(marked.labels[marked.labels != data.ANY_TUMOUR], np.delete(table.labels, healthy[:3]))

    out = tmp_path / "run"
    assert train.main([*common, "--output-dir", str(out), "--untyped-tumors", str(listing)]) == 0
    assert "3 slices are tumors of unknown type" in capsys.readouterr().out
    results = read_results(out)
    for fold, entry in results["folds"].items():  # held out: the fold's typed slices only
        untyped_here = int(((marked.folds == int(fold)) & (marked.labels == data.ANY_TUMOUR)).sum())
        assert entry["num_eval"] == (table.folds == int(fold)).sum() - untyped_here
        assert np.array(entry["confusion_matrix"]).sum() == entry["num_eval"]
    info = json.loads((out / "fold-0" / "config.json").read_text())["training_info"]
    assert info["untyped_tumors"] == str(listing)
    report = tmp_path / "release.json"  # calibrated on the held-out fold's typed slices, as scored above
    assert make_release.main([str(out / "fold-0"), "--output", str(tmp_path / "release"), "--report", str(report)]) == 0
    released = json.loads(report.read_text())
    assert released["held_out_scores"]["slices"] == results["folds"]["0"]["num_eval"]
    assert released["training_slices"] == results["folds"]["0"]["num_train"] == (marked.folds != 0).sum()
    assert released["untyped_training_slices"] == ((marked.folds != 0) & (marked.labels == data.ANY_TUMOUR)).sum()

    listing.write_text("src/notumor/not-a-slice.jpg\n")
    with pytest.raises(UsageError, match="names 1 file"):
        data.load_table(str(dataset), "grouped", with_test=False, untyped_tumors=str(listing))
    assert train.main([*common, "--output-dir", str(tmp_path / "typo"), "--untyped-tumors", str(listing)]) == 2
    assert "not-a-slice.jpg" in capsys.readouterr().err and not (tmp_path / "typo" / "fold-0").exists()
    with pytest.raises(SystemExit):
        train.main([*common, "--output-dir", str(tmp_path / "x"), "--untyped-tumors", str(listing), "--group-dro", "1"])


SHARDS = """
import sys, types
import torch
from accelerate import Accelerator

sys.path.insert(0, sys.argv[1])
from brain_resnet import engine
from brain_resnet.modeling import BrainResNetImageProcessor

accelerator = Accelerator(cpu=True)
count, batch = 23, 4
images = (torch.arange(count, dtype=torch.uint8) * 10).view(count, 1, 1, 1).expand(count, 1, 8, 8).contiguous()
rows = torch.randperm(count, generator=torch.Generator().manual_seed(0))[:19]

def echo(pixel_values):  # logits that tell which image they come from
    return pixel_values.mean(dim=(1, 2, 3))[:, None].repeat(1, 4)

model, processor = torch.nn.Identity(), BrainResNetImageProcessor()
logits = engine.predict(echo, model, accelerator, images, rows, batch, processor)
expected = (images[rows].float().div(255) - 0.5).div(0.5).mean(dim=(1, 2, 3))
assert torch.allclose(logits[:, 0], expected), (logits[:, 0], expected)

seen = []
def record(forward, optimizer, scheduler, accelerator, images, labels, args, processor, *per_row_and_group_weights):
    seen.append(images[:, 0, 0, 0].long() // 10)
    return torch.zeros(()), torch.zeros((), dtype=torch.long)
engine.train_step = record  # train_epoch calls it through the module
order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(1))
args = types.SimpleNamespace(batch_size=batch, untyped_tumors=None)
scheduler = types.SimpleNamespace(get_last_lr=lambda: [0.0])
data = types.SimpleNamespace(
    train_images=images, labels=torch.zeros(count, dtype=torch.long), tumour_sides=None, source_ids=None,
    lesion_masks=None,
)
engine.train_epoch(echo, model, None, scheduler, accelerator, data, rows, order, args, processor)
steps = len(rows) // batch
shares = accelerator.gather(torch.stack(seen)).view(accelerator.num_processes, steps, -1)
assert torch.equal(shares.transpose(0, 1).flatten(), rows[order][: steps * batch]), shares
accelerator.print("sharded and gathered in order on", accelerator.num_processes, "processes")
accelerator.end_training()  # destroys the process group: gloo's threads must not outlive it at exit
"""


def test_two_processes_shard_training_and_gather_eval_in_order(workdir, env):
    script = workdir / "shards.py"
    script.write_text(SHARDS)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*launcher, str(script), str(REPO_ROOT)],
        cwd=workdir,
        env=env | {"OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sharded and gathered in order on 2 processes" in done.stdout


def test_two_process_run_checkpoints_and_gathers_every_held_out_image(workdir, common, env):
    """The real script under torchrun on two CPU processes (gloo): DDP, a checkpoint, gathered metrics."""
    out = workdir / "two-processes"
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cpu = env | {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    done = run_train([*common, "--epochs", "2", "--output-dir", str(out)], cpu, launcher)  # the last --epochs wins
    assert done.returncode == 0, done.stderr[-3000:]
    results = read_results(out)
    assert results["num_processes"] == 2
    for entry in results["folds"].values():
        assert np.array(entry["confusion_matrix"]).sum() == entry["num_eval"] == 20
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["train_images"] for r in log] == [16] * 4  # 2 steps of 8, 4 images per process


def test_model_card_carries_the_runs_metrics(python_run):
    results = read_results(python_run)
    card = ModelCard((python_run / "fold-0" / "README.md").read_text())
    fold, summary = results["folds"]["0"], results["summary"]
    assert f"| 0 | 20 / 20 | {fold['accuracy']:.4f} | {fold['macro_f1']:.4f} |" in card.text
    accuracy = summary["accuracy"]
    assert f"| **mean ± std** |  | {accuracy['mean']:.4f} ± {accuracy['std']:.4f} |" in card.text
    assert "fold 0's model" in card.text and "No trained release exists yet" not in card.text
    # the template's facts about the released weights (their held-out fold, the audit's slices) are not this run's
    assert "Its held-out scores are one fold's" not in card.text and "These weights never saw them" not in card.text
    assert "release-only" not in card.text
    metrics = {(r.metric_type, r.dataset_split): r.metric_value for r in card.data.eval_results}
    assert metrics[("accuracy", "train")] == round(accuracy["mean"], 4)
    assert metrics[("f1", "train")] == round(summary["macro_f1"]["mean"], 4)
    assert card.data.license == "apache-2.0" and card.data.pipeline_tag == "image-classification"


def test_model_card_template_claims_no_results():
    template = (REPO_ROOT / "model_card.md").read_text()
    card = ModelCard(template)
    region = template[template.index(reports.RESULTS_START) : template.index(reports.RESULTS_END)]
    assert "No trained release exists yet" in region and "untrained" in region
    assert not any(char.isdigit() for char in region)
    assert card.data.eval_results is None
    assert card.data.library_name == "transformers" and card.data.license == "apache-2.0"
    with pytest.raises(ValueError, match="markers"):
        reports.render_model_card(template.replace(reports.RESULTS_END, ""), {}, 0, "x")


def test_push_uploads_the_folder_with_its_rendered_card(python_run, common, monkeypatch, capsys):
    calls = []

    class FakeHfApi:
        def create_repo(self, repo_id, exist_ok):
            calls.append(("create_repo", repo_id, exist_ok))

        def upload_folder(self, folder_path, repo_id, commit_message):
            readme = (Path(folder_path) / "README.md").read_text()
            calls.append(("upload_folder", Path(folder_path).name, repo_id, readme))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    argv = [*common, "--output-dir", str(python_run), "--resume", "--push-to-hub", "someone/brain-resnet"]
    assert train.main(argv) == 0
    assert calls[0] == ("create_repo", "someone/brain-resnet", True)
    _, folder, repo_id, readme = calls[1]
    assert (folder, repo_id) == ("fold-0", "someone/brain-resnet")  # no release model in this run: fold 0
    assert 'from_pretrained("someone/brain-resnet", trust_remote_code=True)' in readme
    assert ModelCard(readme).data.model_name == "brain-resnet"
    assert "Uploaded https://huggingface.co/someone/brain-resnet" in capsys.readouterr().out
