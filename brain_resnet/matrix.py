"""Many train.py runs at once on one GPU, within a time limit: the job list of an experiment matrix and the
scheduler that runs it (run_matrix.py).

One eager training process leaves a large GPU idle between its kernel launches; several processes, one per fold
of each run, fill it. Each writes its fold into the run's folder (train.py merges cv_results.json under a lock).
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .folds import FOLD_COLUMNS, PROTOCOL_NAMES
from .modeling import VARIANTS
from .runs import read_json

RELEASE_RUN = "release"  # the run folder of the release candidate


@dataclass
class Job:
    """One train.py process: one fold of one run."""

    name: str
    run_dir: Path
    fold: int
    arguments: list[str]
    process: subprocess.Popen | None = None
    started: float = 0.0
    seconds: float = 0.0
    status: str = "waiting"  # waiting | running | finished | failed (rc N) | stopped | not started
    log: Path = field(init=False)

    def __post_init__(self):
        self.log = self.run_dir / f"train-fold-{self.fold}.log"


def parse_run_specs(text: str) -> list[tuple[str, str]]:
    """`random:improved,grouped:resnet34` -> [(protocol, model)], in the given (priority) order."""
    specs = []
    for item in text.split(","):
        protocol, _, model = item.strip().partition(":")
        if protocol not in FOLD_COLUMNS or model not in VARIANTS:
            raise argparse.ArgumentTypeError(
                f"{item!r}: give PROTOCOL:MODEL with PROTOCOL one of {', '.join(FOLD_COLUMNS)} and MODEL one "
                f"of {', '.join(VARIANTS)}"
            )
        specs.append((protocol, model))
    return specs


def run_dir_name(protocol: str, model: str) -> str:
    return f"{PROTOCOL_NAMES[protocol]}-{model}"


def plan_jobs(
    dataset: str,
    output_dir: Path,
    specs: list[tuple[str, str]],
    folds: list[int],
    sources: list[str] | None,
    release_fold: int | None,
    train_arguments: list[str],
    workers: int,
    release_arguments: Sequence[str] = (),
) -> list[Job]:
    """The release candidate first (the improved model, grouped protocol, every source, one fold held out for its
    calibration, `release_arguments` after the common ones), then every fold of each run in `specs` order, fold by
    fold within a run; less the folds that the run folder's cv_results.json records already (a lent machine sends
    back results, not fold models)."""
    common = ["--dataset", dataset, "--resume", "--workers", str(workers), *train_arguments]
    jobs = []
    if release_fold is not None:
        run_dir = output_dir / RELEASE_RUN
        arguments = ["--output-dir", str(run_dir), "--protocol", "grouped", "--model", "improved"]
        arguments += [*common, *release_arguments]
        jobs.append(Job(f"{RELEASE_RUN} fold {release_fold}", run_dir, release_fold, arguments))
    for protocol, model in specs:
        run_dir = output_dir / run_dir_name(protocol, model)
        arguments = ["--output-dir", str(run_dir), "--protocol", protocol, "--model", model]
        arguments += ["--sources", ",".join(sources)] if sources else []
        jobs += [Job(f"{run_dir.name} fold {fold}", run_dir, fold, arguments + common) for fold in folds]
    jobs = [job for job in jobs if job.fold not in recorded_folds(job.run_dir)]
    for job in jobs:
        job.arguments += ["--folds", str(job.fold)]
    return jobs


def recorded_folds(run_dir: Path) -> set[int]:
    """The folds a train.py run folder's cv_results.json records as finished, with or without their weights."""
    results = read_json(run_dir / "cv_results.json", default={})
    return {int(fold) for fold in results.get("folds", {})}


def run_jobs(jobs: list[Job], processes: int, time_limit: float, grace: float = 60.0, poll: float = 1.0) -> None:
    """Run `jobs` in order, at most `processes` at a time, each `python train.py ...` with its output in job.log.

    A job starts only while its expected duration (the longest finished job's; unknown at first) still fits in
    `time_limit` seconds; at the limit, running jobs get SIGTERM (train.py checkpoints and exits: `--resume`
    continues them later), then SIGKILL after `grace` seconds. Progress is printed as jobs start and end."""
    started = time.perf_counter()
    train_script = Path(__file__).resolve().parents[1] / "train.py"
    # The processes share the cores: more torch threads each would only contend.
    threads = str(max(1, len(os.sched_getaffinity(0)) // processes))
    environment = os.environ | {"PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "10", "OMP_NUM_THREADS": threads}
    waiting, running = list(jobs), []

    def elapsed() -> float:
        return time.perf_counter() - started

    def say(text: str) -> None:
        print(f"[{elapsed():6.0f} s] {text}", flush=True)

    stopping = False
    while waiting or running:
        for job in list(running):
            if (code := job.process.poll()) is not None:
                running.remove(job)
                job.seconds = time.perf_counter() - job.started
                job.status = "finished" if code == 0 else ("stopped" if stopping else f"failed (rc {code})")
                say(f"{job.name}: {job.status} after {job.seconds:.0f} s; log {job.log}")
                if code != 0 and not stopping:
                    print(tail(job.log), file=sys.stderr)
        finished = [job.seconds for job in jobs if job.status == "finished"]
        expected = max(finished, default=0.0)
        while waiting and len(running) < processes and not stopping and elapsed() + expected <= time_limit:
            job = waiting.pop(0)
            job.run_dir.mkdir(parents=True, exist_ok=True)
            with job.log.open("w") as log:
                job.process = subprocess.Popen(
                    [sys.executable, str(train_script), *job.arguments], stdout=log, stderr=subprocess.STDOUT,
                    env=environment,
                )  # fmt: skip
            job.started, job.status = time.perf_counter(), "running"
            running.append(job)
            say(f"{job.name}: started ({len(running)} running, {len(waiting)} waiting)")
        if waiting and not running:  # nothing runs, and nothing left fits in the time (or the limit was reached)
            break
        if not stopping and elapsed() > time_limit and running:
            stopping = True
            say(f"time limit: stopping {len(running)} job(s), which checkpoint and can be resumed")
            for job in running:
                job.process.send_signal(signal.SIGTERM)
        if stopping and elapsed() > time_limit + grace:
            for job in running:
                job.process.kill()
        time.sleep(poll)
    for job in waiting:
        job.status = "not started"
    say(", ".join(f"{sum(j.status == s for j in jobs)} {s}" for s in sorted({j.status for j in jobs})))


def log_lengths(jobs: list[Job]) -> dict[Path, int]:
    """How many lines each job's run log (log.jsonl) holds now: what a step finds there is not its own work."""
    lengths = {}
    for run_dir in {job.run_dir for job in jobs}:
        log = run_dir / "log.jsonl"
        lengths[run_dir] = len(log.read_text().splitlines()) if log.exists() else 0
    return lengths


def images_trained(jobs: list[Job], lengths_before: dict[Path, int]) -> int:
    """Training images of every epoch that the jobs' folds logged after `lengths_before` (log_lengths at the
    step's start): a resumed fold's earlier epochs, and a continued matrix's copied logs, are not this step's."""
    folds = defaultdict(set)
    for job in jobs:
        folds[job.run_dir].add(job.fold)
    total = 0
    for run_dir, skip in lengths_before.items():
        log = run_dir / "log.jsonl"
        records = map(json.loads, log.read_text().splitlines()[skip:] if log.exists() else [])
        total += sum(record["train_images"] for record in records if record["fold"] in folds[run_dir])
    return total


@contextmanager
def cuda_mps() -> Iterator[bool]:
    """CUDA MPS (NVIDIA's Multi-Process Service) for the block: the processes' kernels then share the GPU at once
    instead of taking turns. Started here and stopped at the end; where it cannot start, or a CUDA process cannot
    reach the GPU through it, the block runs without it. Yields whether it is on."""
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        print("CUDA MPS: nvidia-cuda-mps-control not found; the processes take turns on the GPU", flush=True)
        yield False
        return
    started = subprocess.run([control, "-d"], capture_output=True, text=True, check=False)
    if started.returncode != 0:
        reason = (started.stdout + started.stderr).strip() or f"rc {started.returncode}"
        print(f"CUDA MPS: did not start ({reason}); the processes take turns on the GPU", flush=True)
        yield False
        return
    probe = [sys.executable, "-c", "import torch; torch.ones(1, device='cuda').sum().item()"]
    try:
        reached = subprocess.run(probe, capture_output=True, timeout=120, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        reached = False
    if not reached:
        stop_mps(control)
        print("CUDA MPS: no CUDA process got through it, so it is stopped; the processes take turns", flush=True)
        yield False
        return
    print("CUDA MPS: on", flush=True)
    try:
        yield True
    finally:
        stop_mps(control)


def stop_mps(control: str) -> None:
    subprocess.run([control], input="quit\n", text=True, capture_output=True, check=False)


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
