"""Speed of the Gradio Space on this machine, against its targets (2-core CPU).

    python benchmarks/bench_space.py                      # serves MODEL_ID, or the bundled release/
    python benchmarks/bench_space.py --model-id PATH --repeats 20

Prints: model + processor load time; prediction alone per slice (processor + forward, target <= 60 ms); the full
answer with every map, in process and through the launched server with gradio_client (target: median <= 500 ms);
and how long `python space/app.py` takes from start to serving its page (target <= 15 s).
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch
from gradio_client import Client, handle_file

SPACE_DIR = Path(__file__).resolve().parents[1] / "space"
sys.path.insert(0, str(SPACE_DIR))
import app  # noqa: E402

from brain_resnet.cli import number  # noqa: E402

EXAMPLES = [SPACE_DIR / "examples" / name for _, name in app.EXAMPLES]


def milliseconds(run, repeats: int) -> list[float]:
    """Wall time of each call, after one untimed warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return times


def report(name: str, times: list[float], target_ms: float | None = None) -> None:
    median = statistics.median(times)
    p90 = statistics.quantiles(times, n=10)[-1]
    verdict = ""
    if target_ms is not None:
        verdict = f"  (target <= {target_ms:.0f} ms: {'ok' if median <= target_ms else 'MISSED'})"
    print(f"{name:<48} median {median:7.1f} ms   p90 {p90:7.1f} ms   n={len(times)}{verdict}")


def launch_and_wait(model_id: str) -> tuple[subprocess.Popen, str, float]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MODEL_ID": model_id, "GRADIO_SERVER_PORT": str(port)}
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(SPACE_DIR / "app.py")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}/"
    while process.poll() is None:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return process, url, time.perf_counter() - start
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit(f"the Space exited with {process.returncode} before serving")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-id", default=os.environ.get("MODEL_ID", app.DEFAULT_MODEL_ID))
    parser.add_argument("--repeats", type=number(int, 2), default=40, help="timed calls per measurement")
    args = parser.parse_args()

    start = time.perf_counter()
    try:
        model, processor = app.load_model(args.model_id)
    except OSError as error:
        sys.exit(f"Cannot load --model-id {args.model_id!r} (a Hub repo id or a local model folder): {error}")
    print(f"model + processor load: {time.perf_counter() - start:.2f} s ({args.model_id})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    # Other work on the machine inflates every figure: the load average says how quiet the run was.
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f}")
    analyser = app.SliceAnalyser(model, processor)
    images = [app.load_slice(path) for path in EXAMPLES]
    slices = iter(range(10**9))

    def predict_only():
        image = images[next(slices) % len(images)]
        with torch.inference_mode():
            model(analyser.model_input(image)[1]).logits.softmax(-1)

    report("prediction alone (processor + forward)", milliseconds(predict_only, args.repeats), 60)
    pngs = app.PngStore()

    def full_answer():
        app.predict_outputs(analyser.analyse(EXAMPLES[next(slices) % len(EXAMPLES)]), pngs)

    report("full answer in process (decode .. PNG files)", milliseconds(full_answer, args.repeats), 500)

    process, url, ready_s = launch_and_wait(args.model_id)
    try:
        verdict = "ok" if ready_s <= 15 else "MISSED"
        print(f"ready to serve after start: {ready_s:.1f} s  (target <= 15 s: {verdict})")
        files = [handle_file(str(path)) for path in EXAMPLES]
        client = Client(url, verbose=False, download_files=False, analytics_enabled=False)
        # Like a browser, fetch the maps over one kept-alive connection (gradio_client's own download opens a new
        # connection per file, ~30 ms each here, which says nothing about the Space).
        with httpx.Client() as fetcher:

            def answer_only():
                return client.predict(files[next(slices) % len(files)], api_name="/predict")

            def answer_and_maps():
                _, _, cam, se_plot, stage_maps, stem_maps = answer_only()
                for image in [cam, se_plot, *(item["image"] for item in [*stage_maps, *stem_maps])]:
                    fetcher.get(image["url"]).raise_for_status()

            report("through the server: answer (maps as URLs)", milliseconds(answer_only, args.repeats), 500)
            report("through the server: answer + its 9 PNGs", milliseconds(answer_and_maps, args.repeats), 500)
    finally:
        process.terminate()
        process.wait(timeout=15)
    print(f"load average (1 min) at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
