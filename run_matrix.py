"""The experiment matrix on one GPU in one go: train the release candidate and the cross-validation runs side by
side, evaluate the fold models where they are, and write the tables.

    python run_matrix.py --dataset data/all-sources --sources figshare,br35h --external data/brain-tumor-mri-sartaj \\
        --runs random:improved,random:resnet34,grouped:improved,grouped:resnet34 --processes 11 --time-limit 330 \\
        -- --epochs 60 --image-size 128 --batch-size 128 --no-compile

Steps, each reported as it goes:

1. Training (brain_resnet.matrix): one train.py process per fold, up to --processes at once, in priority order:
   the release candidate first (the improved model on every source, grouped protocol, --release-fold held out
   for its calibration, plus --release-training: pasted lesions), then every fold of each PROTOCOL:MODEL of
   --runs, on the rows of --sources (the cross-validation runs leave the --external source unseen, so that it
   measures them). Arguments after `--` go to every train.py. No job starts that would not end by --time-limit;
   at the limit, running jobs checkpoint and stop (rerunning the same command resumes them). With --mps the
   processes train under CUDA MPS, whose kernels then share the GPU at once instead of taking turns.
2. Evaluation of every run with a finished fold: `evaluation.py robustness` (corruptions and the shortcut stress
   tests) and `evaluation.py external` on the --external folder side by side, `evaluation.py summary` into
   RESULTS/summary.json, then make_release.py on the release candidate (into --release, with that summary in its
   card, its operating point at --healthy-false-alarms and mirror averaging, as the bundled release has them).
3. What a run leaves worth keeping (cv_results.json, log.jsonl, plots, train.py's output: everything but weights,
   checkpoints and TensorBoard files) is copied into RESULTS/runs/. With --pack DIR: the release's weight shards
   as they are and one archive of RESULTS and the release's other files, for a machine whose fold models cannot
   come back.

Each step's output goes to a log in --output-dir and a failed step does not stop the next ones.

A later machine continues a matrix with --continue-from EARLIER_RESULTS: the earlier runs' files seed
--output-dir, the folds they record are not trained again, and the summary includes them with the earlier
robustness and external scores.
"""

import argparse
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from contextlib import nullcontext
from pathlib import Path

from brain_resnet.cli import HelpFormatter, hub_repo_id, number
from brain_resnet.matrix import (
    RELEASE_RUN,
    Job,
    cuda_mps,
    images_trained,
    log_lengths,
    parse_run_specs,
    plan_jobs,
    recorded_folds,
    run_dir_name,
    run_jobs,
    tail,
)
from brain_resnet.runs import has_weights, read_json, write_json

ROOT = Path(__file__).resolve().parent
# The files of a run folder worth keeping in RESULTS/runs/ (kept_files also leaves out checkpoints and TensorBoard).
PACKED_SUFFIXES = (".json", ".jsonl", ".png", ".md", ".log", ".txt")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    own, train_arguments = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="run_matrix.py", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--dataset", required=True, help="a folder from prepare_dataset.py (with a source column)")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/matrix"), help="one train.py run folder per run")
    parser.add_argument(
        "--runs",
        type=parse_run_specs,
        default="random:improved,random:resnet34",
        help="PROTOCOL:MODEL cross-validation runs, in priority order",
    )
    parser.add_argument("--folds", default="0,1,2,3,4", help="the folds of each run")
    parser.add_argument(
        "--sources", type=lambda text: text.split(","), help="the cross-validation runs' sources (default: every row)"
    )
    parser.add_argument(
        "--release-fold",
        type=number(int, 0),
        default=0,
        help="the grouped fold the release candidate leaves out, for its calibration and unfamiliar threshold",
    )
    parser.add_argument("--no-release", action="store_true", help="train no release candidate")
    parser.add_argument(
        "--release-training",
        default="--paste-prob 0.3",
        help="train.py arguments of the release candidate alone, after those after `--`",
    )
    parser.add_argument(
        "--healthy-false-alarms",
        type=number(float, 0, 0.5, low_inclusive=False),
        default=0.05,
        help="make_release.py's operating point for the release: this share of held-out healthy slices called a tumor",
    )
    parser.add_argument("--release", type=Path, default=Path("release"), help="the folder make_release.py writes")
    parser.add_argument(
        "--hub-model-id", type=hub_repo_id, help="the Hub repo the release's card names (make_release.py's)"
    )
    parser.add_argument("--external", type=Path, help="a folder of other-source slices, one folder per class")
    parser.add_argument("--results", type=Path, default=Path("results/matrix"), help="the evaluations' JSON files")
    parser.add_argument("--processes", type=number(int, 1), default=4, help="train.py processes at a time")
    parser.add_argument(
        "--time-limit", type=number(float, 0, low_inclusive=False), default=float("inf"), help="seconds of training"
    )
    parser.add_argument(
        "--continue-from",
        type=Path,
        help="the --results folder of an earlier run_matrix.py: its folds are kept, not trained again",
    )
    parser.add_argument("--pack", type=Path, help="folder for the release's shards and an archive of the rest")
    parser.add_argument(
        "--mps",
        action="store_true",
        help="train under CUDA MPS, started and stopped here (where it cannot start, training goes on without it)",
    )
    args = parser.parse_args(own)
    try:
        args.folds = [int(fold) for fold in args.folds.split(",")]
    except ValueError:
        parser.error(f"--folds {args.folds!r}: give fold numbers such as 0,1,2,3,4")
    if len(set(args.folds)) < len(args.folds):  # two train.py processes would share one fold's folder
        parser.error(f"--folds {','.join(map(str, args.folds))}: each fold once")
    if len(set(args.runs)) < len(args.runs):
        parser.error("--runs: each PROTOCOL:MODEL once")
    if args.external is not None and not args.external.is_dir():
        parser.error(f"--external {args.external}: no such folder")
    if args.continue_from is not None and not (args.continue_from / "runs").is_dir():
        parser.error(f"--continue-from {args.continue_from}: not a run_matrix.py --results folder (no runs/ in it)")
    if args.continue_from is not None and args.continue_from.resolve() == args.results.resolve():
        parser.error("--continue-from and --results name one folder: give this machine's results a new one")
    args.train_arguments = train_arguments
    args.command = shlex.join(["python", "run_matrix.py", *argv])
    # Another matrix's files would mix with this one's, and --pack would send both; the same command resumes its own.
    earlier = read_json(args.results / "matrix.json")
    if earlier is not None and earlier.get("command") != args.command:
        parser.error(
            f"--results {args.results} holds another matrix's results ({earlier.get('command')}): give this run a new "
            "folder, or rerun that very command to resume it"
        )
    return args


def cross_validation_runs(args: argparse.Namespace) -> list[Path]:
    """The --runs folders in --output-dir, in priority order."""
    return [args.output_dir / run_dir_name(protocol, model) for protocol, model in args.runs]


def kept_files(folder: Path) -> list[Path]:
    """What is worth keeping of a folder of runs: everything but weights, checkpoints and TensorBoard files."""
    return [
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.suffix in PACKED_SUFFIXES
        and not {"checkpoints", "tensorboard"} & set(path.relative_to(folder).parts)
    ]


def seed_from_earlier(args: argparse.Namespace) -> None:
    """Copy the earlier runs' files into --output-dir (never over a file there): their cv_results.json and logs, to
    which this machine's folds are added. run_args.json stays behind: train.py writes this machine's own."""
    earlier = args.continue_from / "runs"
    copied = 0
    for path in kept_files(earlier):
        target = args.output_dir / path.relative_to(earlier)
        if path.name != "run_args.json" and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            copied += 1
    print(f"continuing from {args.continue_from}: {copied} files of earlier runs copied into {args.output_dir}")


def evaluate(args: argparse.Namespace) -> None:
    """Robustness and external side by side, the summary of the runs, then make_release.py with that summary in
    the release's card; each step logged."""
    python, results = sys.executable, args.results
    results.mkdir(parents=True, exist_ok=True)
    recorded = [run for run in cross_validation_runs(args) if recorded_folds(run)]
    # This machine's fold models (an earlier machine's folds are recorded without them) and the runs holding them.
    fold_models = [fold for run in recorded for fold in sorted(run.glob("fold-*")) if has_weights(fold)]
    runs = list(dict.fromkeys(fold.parent for fold in fold_models))
    robustness, summary = results / "robustness.json", results / "summary.json"
    external = results / f"external-{args.external.name}.json" if args.external is not None else None
    steps = {}
    if runs:
        steps["robustness"] = [python, "evaluation.py", "robustness", *map(str, runs), "--output", str(robustness)]
    if external is not None and fold_models:
        models = [part for fold in fold_models for part in ("--model", str(fold))]
        steps["external"] = [
            python,
            "evaluation.py",
            "external",
            str(args.external),
            *models,
            "--output",
            str(external),
        ]
    run_steps(args, steps)
    if recorded:
        command = [python, "evaluation.py", "summary", *map(str, recorded), "--output", str(summary)]
        if args.continue_from is not None:  # the earlier machine's scores of its own fold models
            command += [
                arg
                for file in sorted(args.continue_from.glob("robustness*.json"))
                for arg in ("--robustness", str(file))
            ]
            command += [
                arg for file in sorted(args.continue_from.glob("external-*.json")) for arg in ("--external", str(file))
            ]
        command += ["--robustness", str(robustness)] if robustness.exists() else []
        command += ["--external", str(external)] if external is not None and external.exists() else []
        run_steps(args, {"summary": command})
    candidate = args.output_dir / RELEASE_RUN / f"fold-{args.release_fold}"
    if not args.no_release and has_weights(candidate):
        command = [python, "make_release.py", str(candidate), "--output", str(args.release)]
        command += ["--report", str(results / "release.json"), "--workers", "8"]
        command += ["--healthy-false-alarms", str(args.healthy_false_alarms), "--mirror-average"]  # as make cpu-release
        command += ["--summary", str(summary)] if summary.exists() else []
        command += ["--hub-model-id", args.hub_model_id] if args.hub_model_id else []
        run_steps(args, {"release": command})


def run_steps(args: argparse.Namespace, steps: dict[str, list[str]]) -> None:
    """Run the commands side by side, each logged to OUTPUT_DIR/NAME.log; report each one's end and its log's tail."""
    processes = {}
    for name, command in steps.items():
        log = (args.output_dir / f"{name}.log").open("w")
        print(f"evaluation: {shlex.join(command[1:])}", flush=True)
        processes[name] = (subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log)
    for name, (process, log) in processes.items():
        code = process.wait()
        log.close()
        print(f"evaluation {name}: {'done' if code == 0 else f'failed (rc {code})'}", flush=True)
        print(tail(args.output_dir / f"{name}.log", 12), flush=True)


def training_report(args: argparse.Namespace, jobs: list[Job], seconds: float, lengths_before: dict) -> dict:
    """What the training step did: every job's outcome and the aggregate throughput of all the processes (every
    image of every epoch this step's jobs trained, over the step's wall time, start-up and per-epoch evaluation
    included)."""
    images = images_trained(jobs, lengths_before)
    return {
        "command": args.command,
        "device": torch_device_name(),
        "processes": args.processes,
        "training_seconds": round(seconds, 1),
        "train_images": images,
        "aggregate_train_images_per_s": round(images / seconds, 1) if seconds else None,
        "jobs": [
            {"name": job.name, "status": job.status, "seconds": round(job.seconds, 1), "log": str(job.log)}
            for job in jobs
        ],
    }


def torch_device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def keep_run_files(args: argparse.Namespace) -> None:
    """Copy what is worth keeping of every run folder into RESULTS/runs/, beside the evaluations."""
    for path in kept_files(args.output_dir):
        target = args.results / "runs" / path.relative_to(args.output_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def pack(args: argparse.Namespace) -> None:
    """The release's weight shards, copied as they are, and the results and the release's other files in one
    archive."""
    args.pack.mkdir(parents=True, exist_ok=True)
    weights = sorted(args.release.glob("*.safetensors")) if args.release.is_dir() else []
    for shard in weights:
        shutil.copy2(shard, args.pack / shard.name)
    kept = [path for path in args.results.rglob("*") if path.is_file()]
    if args.release.is_dir():
        kept += [path for path in args.release.rglob("*") if path.is_file() and path not in weights]
    with tarfile.open(args.pack / "results.tar.gz", "w:gz") as archive:
        for path in kept:
            archive.add(path, arcname=str(path))
    print(f"packed {len(weights)} weight shard(s) and {len(kept)} files into {args.pack}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.continue_from is not None:
        seed_from_earlier(args)
    release_fold = None if args.no_release else args.release_fold
    jobs = plan_jobs(
        args.dataset,
        args.output_dir,
        args.runs,
        args.folds,
        args.sources,
        release_fold,
        args.train_arguments,
        workers=2,
        release_arguments=shlex.split(args.release_training),
    )
    print(f"{len(jobs)} training jobs, {args.processes} at a time, {args.time_limit:.0f} s at most", flush=True)
    lengths_before = log_lengths(jobs)
    with cuda_mps() if args.mps else nullcontext(False) as mps:
        run_jobs(jobs, args.processes, args.time_limit)
    report = training_report(args, jobs, time.perf_counter() - started, lengths_before) | {"cuda_mps": mps}
    args.results.mkdir(parents=True, exist_ok=True)
    write_json(args.results / "matrix.json", report)
    print(
        f"training: {report['train_images']:,} images in {report['training_seconds']:.0f} s, "
        f"{report['aggregate_train_images_per_s']:,.0f} images/s in aggregate on {report['device']}",
        flush=True,
    )
    evaluate(args)
    keep_run_files(args)
    if args.pack is not None:
        pack(args)
    return 0 if all(job.status == "finished" for job in jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
