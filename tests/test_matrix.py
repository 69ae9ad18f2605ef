"""run_matrix.py end to end on a tiny two-source dataset on the CPU: folds trained side by side into one run
folder, the release candidate, the evaluations, the pack a lent GPU machine sends back, the time limit; and
train.py's --sources."""

import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from brain_resnet import data, matrix
from brain_resnet.cli import UsageError

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
TRAIN_ARGUMENTS = ["--", "--epochs", "1", "--image-size", "32", "--batch-size", "8"]


def copy_slices(source: Path, dest: Path, per_class: int) -> Path:
    for name in CLASSES:
        files = sorted((source / name).iterdir())
        (dest / name).mkdir(parents=True)
        for file in files[:: len(files) // per_class][:per_class]:
            shutil.copy(file, dest / name / file.name)
    return dest


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory, brain_mri_data) -> tuple[Path, Path]:
    """A prepared dataset of 10 brain-tumor-mri-4k slices per class (figshare, br35h) and 3 sartaj slices per
    class (2 folds), and those sartaj slices as an external folder."""
    root = tmp_path_factory.mktemp("matrix")
    four_k = copy_slices(brain_mri_data, root / "brain-tumor-mri-4k", 10)
    sartaj = copy_slices(brain_mri_data.parent / "brain-tumor-mri-sartaj", root / "brain-tumor-mri-sartaj", 3)
    command = [sys.executable, "prepare_dataset.py", str(four_k), str(sartaj), str(root / "dataset"), "--folds", "2"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return root / "dataset", sartaj


def run_script(script: str, arguments: list[str], cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    environment = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(REPO_ROOT / script), *arguments]
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=900, check=False)


def run_matrix(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return run_script("run_matrix.py", arguments, cwd)


@pytest.fixture(scope="module")
def matrix_run(two_sources, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The release candidate and 2 folds of the improved model on the 4k rows, 3 processes at once, packed."""
    dataset, sartaj = two_sources
    work = tmp_path_factory.mktemp("matrix-run")
    arguments = [
        "--dataset", str(dataset), "--sources", "figshare,br35h", "--external", str(sartaj),
        "--runs", "random:improved", "--folds", "0,1", "--processes", "3",
        "--output-dir", str(work / "runs"), "--results", str(work / "results"), "--release", str(work / "release"),
        "--pack", str(work / "pack"), "--hub-model-id", "someone/brain-mri", *TRAIN_ARGUMENTS,
    ]  # fmt: skip
    return work, run_matrix(arguments, REPO_ROOT)


def test_folds_trained_side_by_side_share_one_run_folder(matrix_run):
    work, done = matrix_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((work / "runs/stratified-improved/cv_results.json").read_text())
    assert sorted(results["folds"]) == ["0", "1"]  # neither process overwrote the other's fold
    assert results["summary"]["folds"] == [0, 1]
    # --sources: the cross-validation saw the 40 brain-tumor-mri-4k slices, not the sartaj ones
    assert sum(fold["num_eval"] for fold in results["folds"].values()) == 40


def test_matrix_evaluates_the_fold_models_and_makes_the_release(matrix_run):
    work, done = matrix_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((work / "results/summary.json").read_text())
    improved = summary["protocols"]["stratified"]["improved"]
    assert improved["folds"] == 2
    assert summary["cross_source"]["brain-tumor-mri-sartaj"]["models"] == 2
    assert "shortcut_flip_rate" in improved
    config = json.loads((work / "release/config.json").read_text())
    assert config["calibration_temperature"] > 0 and config["familiarity_threshold"] > 0
    assert config["training_info"]["operating_point"]["healthy_false_alarms"] == 0.05  # the release recipe's
    assert config["mirror_average"]  # a slice and its mirror image get one answer, as in the bundled release
    release_run = json.loads((work / "runs/release/run_args.json").read_text())
    cpu_release = (REPO_ROOT / "Makefile").read_text().split("\ncpu-release:")[1].split("\n\n")[0]
    assert f"--paste-prob {release_run['settings']['paste_prob']} " in cpu_release  # make cpu-release's recipe
    report = json.loads((work / "results/release.json").read_text())
    assert report["held_out"] == "fold 0 (grouped protocol)"
    by_source = report["held_out_by_source"]  # the release candidate trained and is scored on every source
    assert sorted(by_source) == ["br35h", "figshare", "sartaj"]
    assert sum(scores["slices"] for scores in by_source.values()) == report["held_out_scores"]["slices"]
    table = data.load_table(
        json.loads((work / "runs/release/run_args.json").read_text())["settings"]["dataset"], "grouped", False
    )  # near-duplicate groups of the held-out fold
    sources, held = np.array(table.sources), table.folds == 0
    for source, scores in by_source.items():
        assert scores["groups"] == len(np.unique(table.groups[held & (sources == source)])) <= scores["slices"]
        for share, (low, high) in scores["intervals"].items():  # 95%, near-duplicate groups resampled whole
            assert 0 <= low <= scores[share] <= high <= 1
    card = (work / "release/README.md").read_text()
    assert "| stratified | improved | 2 |" in card  # the summary's cross-validation table
    assert 'from_pretrained("someone/brain-mri"' in card  # --hub-model-id: the repo the card names
    sartaj = by_source["sartaj"]
    low, high = sartaj["intervals"]["accuracy"]
    assert (
        f"| sartaj | {sartaj['slices']} ({sartaj['groups']}) | {sartaj['accuracy']:.4f} ({low:.3f}–{high:.3f}) |"
        in card
    )
    every = report["held_out_scores"]  # and over every source, first
    assert f"| all | {every['slices']} ({every['groups']}) | {every['accuracy']:.4f} (" in card
    trained = json.loads((work / "results/matrix.json").read_text())
    assert [job["status"] for job in trained["jobs"]] == ["finished"] * 3
    assert trained["aggregate_train_images_per_s"] > 0


def test_pack_holds_the_release_shards_and_one_archive_of_the_rest(matrix_run):
    work, done = matrix_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    packed = sorted(path.name for path in (work / "pack").iterdir())
    shards = [name for name in packed if name.endswith(".safetensors")]
    assert shards and packed == sorted([*shards, "results.tar.gz"])
    with tarfile.open(work / "pack/results.tar.gz") as archive:
        names = archive.getnames()
    assert any(name.endswith("results/summary.json") for name in names)
    assert any(name.endswith("stratified-improved/cv_results.json") for name in names)
    assert any(name.endswith("release/config.json") for name in names)
    assert not any(name.endswith(".safetensors") or "checkpoints" in name for name in names)


def test_a_later_machine_continues_the_matrix_without_retraining_recorded_folds(matrix_run, two_sources, tmp_path):
    """What came back from the first machine (RESULTS with runs/, no fold models) seeds the second one, which
    trains in a fresh --output-dir of the same name (a new machine's checkout)."""
    work, done = matrix_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    dataset, sartaj = two_sources
    arguments = [
        "--dataset", str(dataset), "--sources", "figshare,br35h", "--external", str(sartaj),
        "--runs", "random:improved,grouped:improved", "--folds", "0,1", "--no-release",
        "--continue-from", str(work / "results"), "--output-dir", str(work / "runs"),
        "--results", str(tmp_path / "results"), *TRAIN_ARGUMENTS,
    ]  # fmt: skip
    first_machine = work / "runs-of-the-first-machine"
    (work / "runs").rename(first_machine)
    try:
        later = run_matrix(arguments, REPO_ROOT)
    finally:
        shutil.rmtree(work / "runs", ignore_errors=True)
        first_machine.rename(work / "runs")
    assert later.returncode == 0, later.stdout[-3000:] + later.stderr[-3000:]
    trained = json.loads((tmp_path / "results/matrix.json").read_text())
    assert [job["name"] for job in trained["jobs"]] == ["grouped-improved fold 0", "grouped-improved fold 1"]
    summary = json.loads((tmp_path / "results/summary.json").read_text())
    earlier = summary["protocols"]["stratified"]["improved"]  # the first machine's folds and their scores
    assert earlier["folds"] == 2 and earlier["cross_source"]["brain-tumor-mri-sartaj"]["models"] == 2
    assert summary["protocols"]["grouped"]["improved"]["folds"] == 2
    assert (tmp_path / "results/runs/stratified-improved/cv_results.json").exists()


def test_a_fold_trains_beside_folds_recorded_without_their_models(matrix_run, two_sources, tmp_path):
    """A run folder holding only the cv_results.json of a fold trained on another machine: train.py adds its fold
    and its card, and keeps the other fold's record."""
    work, done = matrix_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    dataset, _ = two_sources
    recorded = json.loads((work / "results/runs/stratified-improved/cv_results.json").read_text())
    del recorded["folds"]["1"]
    run_dir = tmp_path / "stratified-improved"
    run_dir.mkdir()
    (run_dir / "cv_results.json").write_text(json.dumps(recorded))
    arguments = [
        "--dataset", str(dataset), "--sources", "figshare,br35h", "--protocol", "random",
        "--model", "improved", "--folds", "1", "--output-dir", str(run_dir), *TRAIN_ARGUMENTS[1:],
    ]  # fmt: skip
    trained = run_script("train.py", arguments)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert set(json.loads((run_dir / "cv_results.json").read_text())["folds"]) == {"0", "1"}
    assert (run_dir / "fold-1/README.md").exists() and not (run_dir / "fold-0").exists()


def test_time_limit_stops_jobs_resumably_and_still_reports(two_sources, tmp_path):
    """15 s: train.py is past its start-up (it checkpoints on SIGTERM from then on) and far from 1,000 epochs."""
    dataset, _ = two_sources
    arguments = [
        "--dataset", str(dataset), "--runs", "random:improved", "--folds", "0", "--no-release", "--mps",
        "--time-limit", "15", "--output-dir", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
        "--", "--epochs", "1000", "--image-size", "32", "--batch-size", "8",
    ]  # fmt: skip
    done = run_matrix(arguments, REPO_ROOT)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "time limit: stopping 1 job(s)" in done.stdout
    trained = json.loads((tmp_path / "results/matrix.json").read_text())
    assert [job["status"] for job in trained["jobs"]] == ["stopped"]
    assert trained["cuda_mps"] is False and "CUDA MPS: " in done.stdout  # no GPU here: trained without it
    assert list((tmp_path / "runs/stratified-improved/fold-0/checkpoints").glob("epoch-*/progress.json"))


def test_the_aggregate_throughput_counts_only_what_this_step_trained(tmp_path):
    """A resumed fold's log holds its earlier session's epochs (and a continued matrix copies other folds' logs):
    only the lines logged during the step count."""
    run = tmp_path / "run"
    run.mkdir()
    log = run / "log.jsonl"

    def logged(fold: int, epoch: int, images: int) -> None:
        with log.open("a") as file:
            file.write(json.dumps({"fold": fold, "epoch": epoch, "train_images": images}) + "\n")

    jobs = [matrix.Job("fold 0", run, 0, [])]
    logged(0, 1, 1000)  # before the step
    logged(1, 1, 1000)
    before = matrix.log_lengths(jobs)
    logged(0, 2, 100)  # during it
    logged(0, 3, 100)
    logged(1, 2, 1000)  # a fold that is no job of this step

    assert before == {run: 2} and matrix.images_trained(jobs, before) == 200


def test_jobs_still_waiting_at_the_time_limit_are_left_and_the_scheduler_returns(tmp_path, monkeypatch):
    """Once the running jobs stop at the limit, the waiting ones are marked not started (the loop waited for ever)."""
    real_popen = subprocess.Popen
    monkeypatch.setattr(matrix.subprocess, "Popen", lambda command, **kwargs: real_popen(["sleep", "100"], **kwargs))
    jobs = [matrix.Job(f"job {i}", tmp_path / f"run-{i}", 0, []) for i in range(2)]

    scheduler = threading.Thread(target=matrix.run_jobs, args=(jobs, 1, 0.5, 2, 0.05), daemon=True)
    scheduler.start()
    scheduler.join(timeout=30)

    assert not scheduler.is_alive(), "run_jobs did not return after the time limit"
    assert [job.status for job in jobs] == ["stopped", "not started"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--runs", "random:resnet50"], "PROTOCOL:MODEL"),
        (["--runs", "paper:improved"], "PROTOCOL:MODEL"),
        (["--folds", "0,x"], "--folds"),
        (["--external", "no/such/folder"], "no such folder"),
        (["--time-limit", "0"], "must be above 0"),  # would train nothing, and say so only in its summary
        (["--folds", "0,0"], "each fold once"),  # two processes would train one fold's folder at once
        (["--runs", "random:improved,random:improved"], "each PROTOCOL:MODEL once"),
    ],
)
def test_bad_flags_fail_with_a_usage_message(arguments, message, tmp_path):
    done = run_matrix(["--dataset", "unused", *arguments], tmp_path)
    assert done.returncode == 2 and message in done.stderr


def test_results_of_another_matrix_are_not_mixed_with_a_new_ones(tmp_path):
    """Its files would sit beside the new run's, and --pack would send both; the same command resumes its own."""
    arguments = ["--dataset", "unused", "--results", str(tmp_path / "results")]
    (tmp_path / "results").mkdir()
    (tmp_path / "results/matrix.json").write_text(json.dumps({"command": "python run_matrix.py --dataset other"}))
    done = run_matrix(arguments, tmp_path)
    assert done.returncode == 2 and "holds another matrix's results" in done.stderr
    (tmp_path / "results/matrix.json").write_text(
        json.dumps({"command": shlex.join(["python", "run_matrix.py", *arguments])})
    )
    assert "holds another matrix's results" not in run_matrix(arguments, tmp_path).stderr


def fake_mps_control(folder: Path, rc: int) -> Path:
    """An nvidia-cuda-mps-control that records its arguments and input, and exits with `rc`."""
    calls = folder / "calls.txt"
    script = folder / "nvidia-cuda-mps-control"
    script.write_text(f'#!/bin/sh\necho "args:$*" >> {calls}\n[ -t 0 ] || cat >> {calls}\nexit {rc}\n')
    script.chmod(0o755)
    return calls


@pytest.mark.parametrize(
    ("installed", "rc", "message"),
    [
        (False, 0, "not found"),
        (True, 1, "did not start"),
        (True, 0, "no CUDA process got through it"),  # the CPU machine's torch cannot reach a GPU through it
    ],
)
def test_cuda_mps_falls_back_to_taking_turns(installed, rc, message, tmp_path, monkeypatch, capsys):
    calls = fake_mps_control(tmp_path, rc) if installed else tmp_path / "calls.txt"
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin" if installed else "/nonexistent")
    with matrix.cuda_mps() as on:
        assert on is False
    assert message in capsys.readouterr().out
    started = calls.read_text().split("\n") if calls.exists() else []
    # A daemon that started and cannot serve is told to quit before the block runs.
    assert started == ([] if not installed else ["args:-d", ""] if rc else ["args:-d", "args:", "quit", ""])


def test_jobs_run_release_first_then_runs_in_priority_order(tmp_path):
    specs = matrix.parse_run_specs("grouped:resnet34,random:improved")
    release_recipe = ["--paste-prob", "0.3"]
    jobs = matrix.plan_jobs("data", tmp_path, specs, [0, 1], ["figshare"], 0, ["--epochs", "2"], 2, release_recipe)
    assert [job.name for job in jobs] == [
        "release fold 0",
        "grouped-resnet34 fold 0",
        "grouped-resnet34 fold 1",
        "stratified-improved fold 0",
        "stratified-improved fold 1",
    ]
    assert "--sources" not in jobs[0].arguments  # the release candidate trains on every source
    assert jobs[0].arguments[-4:-2] == release_recipe and all("--paste-prob" not in job.arguments for job in jobs[1:])
    assert jobs[1].arguments[jobs[1].arguments.index("--sources") + 1] == "figshare"
    assert all(job.arguments[-2:] == ["--folds", str(job.fold)] for job in jobs)


def test_sources_keep_only_their_rows(two_sources):
    dataset, _ = two_sources
    everything = data.load_table(str(dataset), "random", with_test=False)
    four_k = data.load_table(str(dataset), "random", with_test=False, sources=["figshare", "br35h"])
    assert len(everything.labels) == 52 and len(four_k.labels) == 40
    assert set(four_k.sources) == {"figshare", "br35h"}
    with pytest.raises(UsageError, match="no kaggle rows"):
        data.load_table(str(dataset), "random", with_test=False, sources=["kaggle"])
    # SOURCE/CLASS: one class of a source, as a source seen with healthy slices only
    healthy_only = data.load_table(
        str(dataset), "random", with_test=False, sources=["figshare", "br35h", "sartaj/notumor"]
    )
    names = [healthy_only.class_names[label] for label in healthy_only.labels]
    cells = Counter(zip(healthy_only.sources, names, strict=True))
    assert cells[("sartaj", "notumor")] == 3 and sum(cells.values()) == 43  # no sartaj tumour slice
    with pytest.raises(UsageError, match="no figshare/notumor rows"):
        data.load_table(str(dataset), "random", with_test=False, sources=["figshare/notumor"])


def test_an_exclude_list_may_name_slices_of_sources_left_out(two_sources, tmp_path):
    dataset, _ = two_sources
    everything = data.load_table(str(dataset), "random", with_test=False)  # 40 4k rows, 12 sartaj
    files = data.read_splits(str(dataset))[0]["train"]["file"]
    first = {source: file for file, source in reversed(list(zip(files, everything.sources, strict=True)))}
    listing = tmp_path / "audit.txt"  # as results/label-audit/doubtful-notumor.txt names sartaj slices too
    listing.write_text(f"{first['figshare']}\n{first['sartaj']}\n")
    four_k = data.load_table(str(dataset), "random", False, sources=["figshare", "br35h"], exclude=str(listing))
    assert len(four_k.labels) == 39 and set(four_k.sources) == {"figshare", "br35h"}
    assert len(data.load_table(str(dataset), "random", False, exclude=str(listing)).labels) == 50


def test_balanced_sources_are_drawn_equally_often(two_sources, tmp_path):
    dataset, _ = two_sources
    sources = data.load_table(str(dataset), "random", with_test=False).sources  # 40 4k rows, 12 sartaj
    draws = torch.multinomial(data.balanced_weights(sources), 30_000, replacement=True)
    shares = Counter(sources[i] for i in draws.tolist())
    assert all(abs(count / 30_000 - 1 / 3) < 0.02 for count in shares.values()) and len(shares) == 3

    arguments = [
        "--dataset", str(dataset), "--folds", "0", "--balance-sources",
        "--output-dir", str(tmp_path / "run"), *TRAIN_ARGUMENTS[1:],
    ]  # fmt: skip
    trained = run_script("train.py", arguments)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads((tmp_path / "run/run_args.json").read_text())["settings"]["balance_sources"] is True


def test_no_job_starts_that_the_longest_finished_job_says_would_not_end_in_time(tmp_path, monkeypatch):
    """Jobs of 2 s, one at a time, 3 s allowed: after the first, a second would run past the limit, so it waits for
    the next machine instead of being started and stopped."""
    real_popen = subprocess.Popen
    monkeypatch.setattr(matrix.subprocess, "Popen", lambda command, **kwargs: real_popen(["sleep", "2"], **kwargs))
    jobs = [matrix.Job(f"job {i}", tmp_path / f"run-{i}", 0, []) for i in range(2)]
    matrix.run_jobs(jobs, 1, 3.0, 2, 0.05)
    assert [job.status for job in jobs] == ["finished", "not started"]


def test_plan_leaves_out_the_folds_a_run_folder_records(tmp_path):
    """A continued matrix trains only what the earlier machine did not record (with or without its weights)."""
    specs = matrix.parse_run_specs("random:improved,grouped:improved")
    recorded = tmp_path / "stratified-improved"
    recorded.mkdir()
    (recorded / "cv_results.json").write_text(json.dumps({"folds": {"1": {"accuracy": 0.9}}}))
    jobs = matrix.plan_jobs("data", tmp_path, specs, [0, 1], None, None, [], 2)
    names = ["stratified-improved fold 0", "grouped-improved fold 0", "grouped-improved fold 1"]
    assert [job.name for job in jobs] == names
