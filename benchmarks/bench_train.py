"""Training images/s of train.py's own step for the improved model and ResNet34, in one process or several at once.

    python benchmarks/bench_train.py                 # CUDA: batch 256, 128 px, bf16, channels_last, CUDA graphs
    python benchmarks/bench_train.py --batch-size 16 --image-size 64 --steps 3 --warmup 1   # a CPU-sized run
    python benchmarks/bench_train.py --models improved --batch-size 64 --image-size 96 --steps 6 --warmup 2 \
        --compare-float32                           # the CPU fast path against plain float32, side by side
    python benchmarks/bench_train.py --no-compile --profile 5   # also: kernels launched and GPU-busy time per step
    python benchmarks/bench_train.py --models improved --no-compile --processes 16 --mps   # 16 trainings at once

Each step is exactly train.py's: a batch gathered from a device-resident uint8 cache, augmented on the device,
forward and backward (bf16 autocast on CUDA and on CPUs with bf16 instructions, channels_last), AdamW and the LR
schedule. Data is random: speed does not depend on it. The first `--warmup` steps (compilation, cuDNN autotuning)
are not timed; they are reported apart. --compare-float32 also times each model the way train.py ran before its
fast path (float32, contiguous tensors) and prints the speed-up. --profile N runs N more steps under
torch.profiler and prints, per step, the kernels launched, the time some kernel was running against the wall time
(a GPU busy far less than the wall time waits on Python and kernel launches), and the operators that take the most
device time.

--processes N trains N copies of each model at once, one process each (as run_matrix.py trains folds side by side;
with --mps under CUDA MPS), their timed steps starting together; it prints each process's images/s and all of
them together (every process's images over the span from the first timed step to the last).
"""

import argparse
import copy
import queue
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.multiprocessing as mp
from accelerate import Accelerator
from torch.autograd import DeviceType
from transformers import get_cosine_schedule_with_warmup

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's package, installed or not
from brain_resnet.cli import number  # noqa: E402
from brain_resnet.data import CACHE_MARGIN  # noqa: E402
from brain_resnet.engine import (  # noqa: E402
    build_optimizer,
    configure_backends,
    logits_function,
    model_config,
    native_bf16,
    train_step,
)
from brain_resnet.matrix import cuda_mps  # noqa: E402
from brain_resnet.modeling import VARIANTS, BrainResNetForImageClassification, BrainResNetImageProcessor  # noqa: E402

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def measure(name: str, args, accelerator: Accelerator, bf16: bool, layout: torch.memory_format, barrier=None) -> dict:
    """Warm-up seconds and timed images/s of train.py's step (engine.train_step) for one model variant, precision
    and layout; with a `barrier`, the timed steps wait for every process sharing it to finish its warm-up."""
    device = accelerator.device
    torch.manual_seed(0)
    config = model_config(name, CLASSES)
    model = BrainResNetForImageClassification(config)
    model.to(device, memory_format=layout)
    params = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05, fused=device.type == "cuda")
    total = args.warmup + args.steps
    scheduler = get_cosine_schedule_with_warmup(optimizer, total // 10, total)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    compiled = torch.compile(model, mode=args.compile_mode) if args.compile else model
    logits = logits_function(compiled, device, bf16=bf16)

    def forward(pixel_values: torch.Tensor) -> torch.Tensor:
        return logits(pixel_values.contiguous(memory_format=layout))

    processor = BrainResNetImageProcessor(size=args.image_size)
    step_args = SimpleNamespace(
        image_size=args.image_size,
        label_smoothing=0.1,
        geometry_only=False,
        jitter_scale=None,
        remap_prob=0.5,
        invert_prob=0.0,
        gin_prob=0.0,
        shuffle_prob=0.0,
        match_sources=0.0,
    )

    cache_size = round(args.image_size * CACHE_MARGIN)
    images = torch.randint(0, 256, (4 * args.batch_size, 1, cache_size, cache_size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, len(CLASSES), (len(images),), device=device)

    def run(steps: int) -> float:
        if steps == 0:  # no warm-up
            return 0.0
        started = time.perf_counter()
        for _ in range(steps):
            rows = torch.randint(0, len(images), (args.batch_size,), device=device)
            loss, _ = train_step(
                forward, optimizer, scheduler, accelerator, images[rows], labels[rows], step_args, processor
            )
        loss.item()  # waits for the device
        return time.perf_counter() - started

    model.train()
    warmup_seconds = run(args.warmup)
    if barrier is not None:
        barrier.wait()
    started = time.time()
    seconds = run(args.steps)
    result = {
        "params": params,
        "warmup_s": warmup_seconds,
        "images_per_s": args.steps * args.batch_size / seconds,
        "span": (started, started + seconds),
    }
    if args.profile:
        result["profile"] = profile_steps(run, args.profile, device)
    accelerator.free_memory()
    return result


def measure_together(name: str, args, processes: int) -> dict:
    """`processes` processes each train their own copy of the model at once; each one's images/s, and all of them
    together over the span from the first timed step's start to the last one's end."""
    context = mp.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    worker_args = copy.copy(args)
    worker_args.profile = 0
    workers = [
        context.Process(target=measure_in_worker, args=(name, worker_args, barrier, results)) for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    measured = []
    while len(measured) < processes:
        try:
            measured.append(results.get(timeout=5))
        except queue.Empty:
            if any(worker.exitcode not in (None, 0) for worker in workers):
                barrier.abort()
                for worker in workers:
                    worker.terminate()
                sys.exit(f"a benchmark process for {name} failed (its error is above)")
    for worker in workers:
        worker.join()
    rates = [result["images_per_s"] for result in measured]
    first_start = min(result["span"][0] for result in measured)
    last_end = max(result["span"][1] for result in measured)
    return {
        "params": measured[0]["params"],
        "warmup_s": max(result["warmup_s"] for result in measured),
        "per_process": rates,
        "images_per_s": processes * args.steps * args.batch_size / (last_end - first_start),
    }


def measure_in_worker(name: str, args, barrier, results) -> None:
    accelerator = Accelerator(mixed_precision="no")
    configure_backends(accelerator.device)
    results.put(measure(name, args, accelerator, native_bf16(), torch.channels_last, barrier=barrier))


def profile_steps(run, steps: int, device: torch.device) -> dict:
    """Per step: kernels launched, milliseconds some kernel ran, wall milliseconds; and the operators with the most
    self time on the device (the CPU's time where there is no GPU)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, acc_events=True) as profiler:
        wall_seconds = run(steps)
    averages = profiler.key_averages()
    kernels = [event for event in averages if event.device_type == DeviceType.CUDA]
    operators = [event for event in averages if event.device_type == DeviceType.CPU and event.key.startswith("aten::")]
    time_of = (lambda e: e.self_device_time_total) if kernels else (lambda e: e.self_cpu_time_total)
    top = sorted(operators, key=time_of, reverse=True)[:8]
    return {
        "operators_per_step": sum(event.count for event in operators) / steps,
        "kernels_per_step": sum(event.count for event in kernels) / steps,
        "busy_ms_per_step": sum(event.self_device_time_total for event in kernels) / steps / 1000,
        "wall_ms_per_step": wall_seconds / steps * 1000,
        "top_operators": [(event.key, event.count / steps, time_of(event) / steps / 1000) for event in top],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="improved,resnet34", help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--batch-size", type=number(int, 1), default=256)
    parser.add_argument("--image-size", type=number(int, 1), default=128)
    parser.add_argument("--steps", type=number(int, 1), default=50)
    parser.add_argument("--warmup", type=number(int, 0), default=10)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="default: on CUDA")
    parser.add_argument(
        "--compile-mode",
        default="reduce-overhead",
        choices=("reduce-overhead", "default", "max-autotune", "max-autotune-no-cudagraphs"),
        help="torch.compile's mode, as train.py's --compile-mode (the same default: CUDA graphs)",
    )
    parser.add_argument(
        "--compare-float32",
        action="store_true",
        help="also time float32 with contiguous tensors (train.py before its CPU fast path) and print the speed-up",
    )
    parser.add_argument(
        "--profile",
        type=number(int, 0),
        default=0,
        metavar="STEPS",
        help="profile this many more steps: kernels and device-busy time per step, the costliest operators",
    )
    parser.add_argument(
        "--processes",
        type=number(int, 1),
        default=1,
        help="train this many copies of each model at once, one process each",
    )
    parser.add_argument("--mps", action="store_true", help="with --processes: run them under CUDA MPS")
    args = parser.parse_args()
    unknown = [name for name in args.models.split(",") if name not in VARIANTS and not Path(name).is_file()]
    if unknown:
        parser.error(
            f"--models: {', '.join(map(repr, unknown))} is neither a variant ({', '.join(VARIANTS)}) nor a file"
        )
    if args.mps and args.processes == 1:
        parser.error("--mps shares the GPU between processes: give --processes too")
    if args.processes > 1 and (args.profile or args.compare_float32):
        parser.error("--profile and --compare-float32 measure one process: leave out --processes")

    accelerator = Accelerator(mixed_precision="no")
    device = accelerator.device
    args.compile = device.type == "cuda" if args.compile is None else args.compile
    configure_backends(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    bf16 = native_bf16()  # what train.py's --mixed-precision auto picks
    precision = f"{'bf16 autocast' if bf16 else 'float32'}, channels_last"
    compiled = f"torch.compile mode {args.compile_mode}" if args.compile else "eager"
    print(f"device: {name}; torch {torch.__version__}; {precision}; {compiled}")
    print(f"batch {args.batch_size}, {args.image_size} px, {args.warmup} warm-up + {args.steps} timed steps")

    variants = args.models.split(",")
    if args.processes > 1:
        with cuda_mps() if args.mps else nullcontext(False):
            together = {variant: measure_together(variant, args, args.processes) for variant in variants}
        print_together(together, args.processes)
        return
    results = {variant: measure(variant, args, accelerator, bf16, torch.channels_last) for variant in variants}
    baseline = results.get("resnet34", next(iter(results.values())))["images_per_s"]
    print(f"{'model':<14} {'params':>12} {'warm-up s':>10} {'train img/s':>12} {'x R34':>6}")
    for variant, result in results.items():
        rate = result["images_per_s"]
        print(
            f"{variant:<14} {result['params']:>12,} {result['warmup_s']:>10.1f} {images_per_s(rate):>12} "
            f"{rate / baseline:>6.3f}"
        )
    for variant, result in results.items():
        if "profile" in result:
            print_profile(variant, result["profile"])
    if args.compare_float32:
        print(f"\nthe same step in float32, contiguous tensors ({compiled}):")
        print(f"{'model':<14} {'float32 img/s':>14} {'train.py img/s':>15} {'speed-up':>9}")
        for variant in variants:
            plain = measure(variant, args, accelerator, False, torch.contiguous_format)["images_per_s"]
            fast = results[variant]["images_per_s"]
            print(f"{variant:<14} {plain:>14,.1f} {fast:>15,.1f} {fast / plain:>8.2f}x")


def images_per_s(rate: float) -> str:
    """Whole images a second, with one decimal below 10 so that a slow run (a busy CPU, a tiny batch) shows no 0."""
    return f"{rate:,.0f}" if rate >= 10 else f"{rate:.1f}"


def print_together(results: dict, processes: int) -> None:
    print(f"{processes} processes at once, each training its own copy; timed steps start together")
    print(f"{'model':<14} {'params':>12} {'per process img/s (min-median-max)':>36} {'together img/s':>15}")
    for variant, result in results.items():
        rates = result["per_process"]
        spread = "-".join(images_per_s(rate) for rate in (min(rates), statistics.median(rates), max(rates)))
        print(f"{variant:<14} {result['params']:>12,} {spread:>36} {images_per_s(result['images_per_s']):>15}")


def print_profile(variant: str, profile: dict) -> None:
    counts = f"{profile['operators_per_step']:,.0f} aten operators"
    if profile["kernels_per_step"]:
        counts += f", {profile['kernels_per_step']:,.0f} kernels, device busy {profile['busy_ms_per_step']:.2f} ms"
    print(f"\n{variant}, per step under torch.profiler: {counts}, {profile['wall_ms_per_step']:.2f} ms wall")
    print(f"  {'operator':<44} {'calls':>7} {'self ms':>8}")
    for name, calls, milliseconds in profile["top_operators"]:
        print(f"  {name:<44} {calls:>7.0f} {milliseconds:>8.2f}")


if __name__ == "__main__":
    main()
