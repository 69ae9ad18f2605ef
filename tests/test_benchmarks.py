"""The training benchmark runs train.py's own step: it must keep up with the step's arguments, or a GPU lease spends
its minutes on a traceback (the sixth lease's second call did)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_bench_train_times_both_models_with_train_step():
    command = [sys.executable, "benchmarks/bench_train.py", "--models", "improved,resnet34", "--batch-size", "2"]
    command += ["--image-size", "32", "--steps", "1", "--warmup", "1", "--no-compile"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    for model in ("improved", "resnet34"):
        row = re.search(rf"^{model}\s+[\d,]+\s+[\d.]+\s+([\d,.]+)\s+([\d.]+)$", done.stdout, re.MULTILINE)
        assert row, done.stdout
        assert float(row.group(1).replace(",", "")) > 0


def test_bench_decode_times_the_processor_with_each_number_of_workers(tmp_path, brain_mri_data):
    for name in ("glioma", "notumor"):
        (tmp_path / "src" / name).mkdir(parents=True)
        for file in sorted((brain_mri_data / name).iterdir())[:3]:
            shutil.copy(file, tmp_path / "src" / name)
    prepare = [sys.executable, "prepare_dataset.py", str(tmp_path / "src"), str(tmp_path / "data"), "--folds", "2"]
    subprocess.run(prepare, cwd=REPO_ROOT, capture_output=True, timeout=300, check=True)
    command = [sys.executable, "benchmarks/bench_decode.py", str(tmp_path / "data"), "--workers", "1,2"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rates = re.findall(r"^\s*(\d+) workers:\s+([\d,]+) slices/s", done.stdout, re.MULTILINE)
    assert [workers for workers, _ in rates] == ["1", "2"] and all(int(rate.replace(",", "")) > 0 for _, rate in rates)


def test_benchmarks_refuse_what_they_cannot_measure_in_one_line():
    """A lease's minutes go to measuring: a wrong model name or count gets a usage line, before any work."""
    for script, arguments, message in [
        ("bench_train.py", ["--models", "improved,"], "is neither a variant"),
        ("bench_train.py", ["--models", "resnet50"], "is neither a variant"),
        ("bench_train.py", ["--steps", "0"], "--steps: 0 is out of range"),
        ("bench_model.py", ["--steps", "0"], "--steps: 0 is out of range"),
        ("bench_space.py", ["--repeats", "1"], "--repeats: 1 is out of range"),
        ("bench_decode.py", ["data/all-sources", "--workers", "0,2"], "expected numbers of at least 1"),
        ("bench_decode.py", ["data/all-sources", "--workers", "two"], "expected whole numbers"),
        ("bench_decode.py", ["no/such/dataset"], "no such folder"),
    ]:
        command = [sys.executable, f"benchmarks/{script}", *arguments]
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
