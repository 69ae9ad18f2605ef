"""The training benchmark runs train.py's own step: it must keep up with the step's arguments, or a GPU lease spends
its minutes on a traceback (the sixth lease's second call did)."""

import re
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
