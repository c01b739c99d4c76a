"""Latency of the demo page's work for one image: probabilities + the four stage overlays, on CPU.

Times :func:`medvit.demo.explain_image` (preprocess, one forward + one backward pass for the four stage
CAMs, upsampling and overlays) for each embedded demo model at the network input size it was trained
for (what the page feeds it; ``--size N`` forces N² on every model that accepts it), after warm-up, on a
bundled sample. Target: at most 1.0 s on a 2-core machine.

    .venv/bin/python experiments/benchmarks/app_latency.py [--size N] [--repeats 10] [--threads 2]

Writes ``experiments/benchmarks/results/app_latency.csv`` and ``app_latency.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from medvit import demo  # noqa: E402
from medvit.data.images import read_image  # noqa: E402

_logger = logging.getLogger("medvit.benchmarks.app_latency")
RESULTS = Path(__file__).resolve().parent / "results"


def time_model(entry: demo.RunEntry, rgb, size: int | None, repeats: int, warmup: int, method: str) -> dict:
    """Median and spread of ``explain_image`` for one run directory at its own input size (or ``size``²)."""
    model = demo.load_demo_model(entry.path)
    if size is not None:
        model.run = dataclasses.replace(model.run, image_size=(size, size))  # a forced input size
    height, width = model.run.image_size
    for _ in range(warmup):
        demo.explain_image(model, rgb, method=method)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        explanation = demo.explain_image(model, rgb, method=method)
        seconds.append(time.perf_counter() - start)
    assert len(explanation.stages) == 4 and abs(explanation.probabilities.sum() - 1) < 1e-4
    return {
        "run": entry.path.name,
        "model": entry.model_name,
        "dataset": entry.dataset,
        "default": entry.is_default,
        "input": f"{height}x{width}",
        "image": f"{rgb.shape[1]}x{rgb.shape[0]}",
        "method": method,
        "threads": torch.get_num_threads(),
        "load_avg_1min": os.getloadavg()[0],
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "repeats": repeats,
        "meets_1s": statistics.median(seconds) <= 1.0,
    }


def main() -> None:
    """Time every embedded demo model and write the CSV + Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=None, help="force an N² network input (default: each model's own)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--only-default", action="store_true", help="time only the default models")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    entries = [e for e in demo.discover_runs(None) if e.is_embedded and (e.is_default or not args.only_default)]
    if not entries:
        raise SystemExit("no embedded demo models in medvit/assets/demo_models/; run `make demo-models` first")
    samples = demo.load_samples()
    rows = []
    for entry in entries:
        sample = next((s for s in samples if s.dataset == entry.dataset), samples[0])
        try:
            row = time_model(entry, read_image(sample.path), args.size, args.repeats, args.warmup, args.method)
        except (ValueError, RuntimeError) as error:  # e.g. a model built for another input size
            _logger.warning("%s: not timed at %s²: %s", entry.path.name, args.size, error)
            continue
        _logger.info("%s: median %.3f s", entry.path.name, row["median_s"])
        rows.append(row)
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "app_latency.csv", index=False, float_format="%.4f")
    size_text = f"{args.size}² for every model" if args.size else "each model's own (column `input`, H×W)"
    header = (
        "# Demo latency: image to probabilities + 4 stage overlays (CPU)\n\n"
        f"`medvit.demo.explain_image`, {args.method}, network input {size_text}, median of {args.repeats} "
        f"after {args.warmup} warm-up calls, torch {torch.__version__}, {args.threads} threads, "
        f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical CPUs). Target: ≤ 1.0 s. "
        "`min_s` is the least-contended call; on a machine shared with other jobs (see `load_avg_1min`, the "
        "1-minute load average when the model finished) the median includes waiting for a CPU.\n\n"
        "Reproduce: `.venv/bin/python experiments/benchmarks/app_latency.py`\n\n"
    )
    (args.out / "app_latency.md").write_text(header + table.to_markdown(index=False, floatfmt=".3f") + "\n")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
