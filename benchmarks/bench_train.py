"""Training images/s of train.py's own step for the improved model and ResNet34, in one process.

    python benchmarks/bench_train.py                 # CUDA: batch 256, 128 px, bf16, channels_last, compiled
    python benchmarks/bench_train.py --batch-size 16 --image-size 64 --steps 3 --warmup 1   # a CPU-sized run
    python benchmarks/bench_train.py --models improved --batch-size 64 --image-size 96 --steps 6 --warmup 2 \
        --compare-float32                           # the CPU fast path against plain float32, side by side

Each step is exactly train.py's: a batch gathered from a device-resident uint8 cache, augmented on the device,
forward and backward (bf16 autocast on CUDA and on CPUs with bf16 instructions, channels_last), AdamW and the LR
schedule. Data is random: speed does not depend on it. The first `--warmup` steps (compilation, cuDNN autotuning)
are not timed; they are reported apart. --compare-float32 also times each model the way train.py ran before its
fast path (float32, contiguous tensors) and prints the speed-up.
"""

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from accelerate import Accelerator
from transformers import get_cosine_schedule_with_warmup

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's package, installed or not
from brain_resnet.data import CACHE_MARGIN  # noqa: E402
from brain_resnet.engine import build_optimizer, logits_function, model_config, native_bf16, train_step  # noqa: E402
from brain_resnet.modeling import VARIANTS, BrainResNetForImageClassification, BrainResNetImageProcessor  # noqa: E402

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def measure(name: str, args, accelerator: Accelerator, bf16: bool, layout: torch.memory_format) -> dict:
    """Warm-up seconds and timed images/s of train.py's step (engine.train_step) for one model variant, precision
    and layout."""
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
    step_args = SimpleNamespace(image_size=args.image_size, label_smoothing=0.1, remap_prob=0.5)

    cache_size = round(args.image_size * CACHE_MARGIN)
    images = torch.randint(0, 256, (4 * args.batch_size, 1, cache_size, cache_size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, len(CLASSES), (len(images),), device=device)

    def run(steps: int) -> float:
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
    seconds = run(args.steps)
    accelerator.free_memory()
    return {"params": params, "warmup_s": warmup_seconds, "images_per_s": args.steps * args.batch_size / seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="improved,resnet34", help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="default: on CUDA")
    parser.add_argument(
        "--compile-mode",
        default="default",
        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
        help="torch.compile mode to try (train.py uses the default)",
    )
    parser.add_argument(
        "--compare-float32",
        action="store_true",
        help="also time float32 with contiguous tensors (train.py before its CPU fast path) and print the speed-up",
    )
    args = parser.parse_args()

    accelerator = Accelerator(mixed_precision="no")
    device = accelerator.device
    args.compile = device.type == "cuda" if args.compile is None else args.compile
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    bf16 = native_bf16()  # what train.py's --mixed-precision auto picks
    precision = f"{'bf16 autocast' if bf16 else 'float32'}, channels_last"
    compiled = f"torch.compile mode {args.compile_mode}" if args.compile else "eager"
    print(f"device: {name}; torch {torch.__version__}; {precision}; {compiled}")
    print(f"batch {args.batch_size}, {args.image_size} px, {args.warmup} warm-up + {args.steps} timed steps")

    variants = args.models.split(",")
    results = {variant: measure(variant, args, accelerator, bf16, torch.channels_last) for variant in variants}
    baseline = results.get("resnet34", next(iter(results.values())))["images_per_s"]
    print(f"{'model':<14} {'params':>12} {'warm-up s':>10} {'train img/s':>12} {'x R34':>6}")
    for variant, result in results.items():
        print(
            f"{variant:<14} {result['params']:>12,} {result['warmup_s']:>10.1f} {result['images_per_s']:>12,.0f} "
            f"{result['images_per_s'] / baseline:>6.3f}"
        )
    if args.compare_float32:
        print(f"\nthe same step in float32, contiguous tensors ({compiled}):")
        print(f"{'model':<14} {'float32 img/s':>14} {'train.py img/s':>15} {'speed-up':>9}")
        for variant in variants:
            plain = measure(variant, args, accelerator, False, torch.contiguous_format)["images_per_s"]
            fast = results[variant]["images_per_s"]
            print(f"{variant:<14} {plain:>14,.1f} {fast:>15,.1f} {fast / plain:>8.2f}x")


if __name__ == "__main__":
    main()
