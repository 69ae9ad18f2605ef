"""Time the documented prepare command on brain-tumor-mri-4k (budget: 60 s on the 2-core dev machine).

    python benchmarks/bench_prepare_dataset.py [SRC]

Runs ``python prepare_dataset.py SRC <temp>/out --folds 5 --seed 0`` the way a user does (a fresh
process, imports included), prints the wall time, and deletes the output. SRC defaults to
$BRAIN_MRI_DATA, else ../shared/data/brain-tumor-mri-4k beside the repository.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 60.0


def main() -> None:
    default = os.environ.get("BRAIN_MRI_DATA") or REPO_ROOT.parent / "shared/data/brain-tumor-mri-4k"
    src = Path(sys.argv[1] if len(sys.argv) > 1 else default)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "prepare_dataset.py", str(src), str(Path(tmp) / "out"), "--folds", "5", "--seed", "0"]
        started = time.perf_counter()
        run = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
    if run.returncode:
        sys.exit(f"prepare_dataset.py failed:\n{run.stderr}")
    print(run.stdout.strip().splitlines()[-1])
    verdict = "within" if wall <= BUDGET_S else "OVER"
    print(f"wall time {wall:.1f} s on {os.cpu_count()} CPU cores, {verdict} the {BUDGET_S:.0f} s budget")


if __name__ == "__main__":
    main()
