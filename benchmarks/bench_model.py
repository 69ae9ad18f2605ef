"""Training-step throughput, parameters and FLOPs of the improved model against the ResNet34 baseline.

    python benchmarks/bench_model.py                       # GPU if there is one (batch 128, 224 px, bf16)
    python benchmarks/bench_model.py --batch-size 16 --steps 5   # a CPU-sized run

Both models run in the same process, alternately, so the comparison holds on whatever device this is.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's package, installed or not
from brain_resnet.cli import number  # noqa: E402
from brain_resnet.metrics import forward_flops  # noqa: E402
from brain_resnet.modeling import VARIANTS, BrainResNetConfig, BrainResNetForImageClassification  # noqa: E402

COMPARED = ("improved", "resnet34")


def images_per_second(model, device, batch_size, image_size, num_channels, steps, warmup) -> float:
    """Forward + backward + AdamW steps per second on random data, bf16 autocast and channels_last on CUDA."""
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pixel_values = torch.randn(batch_size, num_channels, image_size, image_size, device=device)
    labels = torch.randint(0, model.config.num_labels, (batch_size,), device=device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with autocast:
            loss = model(pixel_values, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=number(int, 1), default=128)
    parser.add_argument("--image-size", type=number(int, 1), default=224)
    parser.add_argument("--num-channels", type=number(int, 1), default=1)
    parser.add_argument("--steps", type=number(int, 1), default=30)
    parser.add_argument("--warmup", type=number(int, 0), default=5)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    precision = "bf16 autocast, channels_last" if device.type == "cuda" else "float32 (no GPU: CPU figures)"
    print(f"device: {name}; torch {torch.__version__}; {precision}")
    print(f"batch {args.batch_size}, {args.image_size} px, {args.num_channels} channel(s), {args.steps} timed steps")

    results = {}
    for variant in COMPARED:
        torch.manual_seed(0)
        config = BrainResNetConfig(num_channels=args.num_channels, **VARIANTS[variant])
        model = BrainResNetForImageClassification(config)
        params = sum(p.numel() for p in model.parameters())
        flops = forward_flops(model, args.image_size, args.num_channels)
        speed = images_per_second(
            model, device, args.batch_size, args.image_size, args.num_channels, args.steps, args.warmup
        )
        results[variant] = (params, flops, speed)

    base_params, base_flops, base_speed = results["resnet34"]
    print(f"{'model':<10} {'params':>12} {'x R34':>6} {'GFLOPs/img':>11} {'x R34':>6} {'train img/s':>12} {'x R34':>6}")
    for variant, (params, flops, speed) in results.items():
        print(
            f"{variant:<10} {params:>12,} {params / base_params:>6.3f} {flops / 1e9:>11.2f} "
            f"{flops / base_flops:>6.3f} {speed:>12,.0f} {speed / base_speed:>6.3f}"
        )


if __name__ == "__main__":
    main()
