"""Slices/s through the image processor, as train.py builds its caches and evaluation.py decodes each test.

    python benchmarks/bench_decode.py data/all-sources                  # 1 worker, then one per CPU
    python benchmarks/bench_decode.py data/all-sources --workers 1,2,16 --sizes 128,160 --limit 2000

Decodes the dataset's first --limit rows with `brain_resnet.data.decode_images` (JPEG decoding, the processor's
brain crop and intensity scale, one resize per size) with each number of workers, as train.py, evaluation.py and
make_release.py do with their --workers, and prints slices/s. evaluation.py's robustness tests on the 16-CPU GPU
machine waited on this, not on the GPU: about 170 slices/s a test in the eighth lease, when the workers were
threads, which the processor's many small tensor operations serialise on Python's lock.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's package, installed or not

from brain_resnet.cli import UsageError, number  # noqa: E402
from brain_resnet.data import decode_images, load_table  # noqa: E402
from brain_resnet.modeling import BrainResNetImageProcessor  # noqa: E402


def counts(text: str) -> list[int]:
    """ "1,2,16" -> [1, 2, 16], each at least 1."""
    try:
        values = [int(value) for value in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, got {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected numbers of at least 1, got {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="a prepare_dataset.py output folder")
    parser.add_argument("--workers", type=counts, default=[1, len(os.sched_getaffinity(0))])
    parser.add_argument("--sizes", type=counts, default=[128], help="sizes decoded per slice, as train.py")
    parser.add_argument("--limit", type=number(int, 1), default=1000, help="rows decoded per run")
    args = parser.parse_args()

    try:
        table = load_table(args.dataset, "random", with_test=False)
    except UsageError as error:
        parser.error(str(error))
    images = table.images[: args.limit]
    processor = BrainResNetImageProcessor()
    print(f"{len(images):,} slices of {args.dataset}, sizes {args.sizes}, {os.cpu_count()} CPUs")
    for workers in args.workers:
        started = time.perf_counter()
        decode_images(images, processor, args.sizes, workers)
        elapsed = time.perf_counter() - started
        print(f"{workers:>3} workers: {len(images) / elapsed:8,.0f} slices/s ({elapsed:.1f} s)")


if __name__ == "__main__":
    main()
