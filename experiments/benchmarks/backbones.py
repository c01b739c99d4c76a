"""CPU benchmark of the zoo's backbones: parameters, GFLOPs, images/s and peak memory per input size.

Writes ``results/backbones.csv`` and ``results/backbones.md`` next to this file (or under ``--out-dir``)::

    .venv/bin/python experiments/benchmarks/backbones.py                       # every backbone, 224..768
    .venv/bin/python experiments/benchmarks/backbones.py --sizes 224           # the 224 column only
    .venv/bin/python experiments/benchmarks/backbones.py --models vvt_tiny pvt_v2_b1 --sizes 384 512 768 --merge

Method (one row per model and input size):

* Every (model, size) runs in a fresh Python process, so one measurement's allocator state, oneDNN
  caches and threads cannot leak into the next; ``torch.set_num_threads(--threads)`` (2), eval mode,
  ``torch.inference_mode()``, batch ``--batch`` (8) of random images, 1000 classes.
* Throughput: ``--warmup`` untimed batches, then ``--iters`` timed batches (``time.perf_counter``);
  ``images/s mean`` = batch / mean batch time, ``images/s best`` = batch / fastest batch. The best is the
  steadier number on a shared machine; the 1-minute load average at the start of each row is recorded.
  ``--rounds R`` repeats the whole list R times (interleaving the models, so a burst of load on the
  machine hits all of them) and pools the timed batches.
* OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE`` unless the caller sets it): with the
  default spin-waiting, 2-thread runs collapse when other processes share the cores (EfficientNet-Lite0
  measured 1.4 img/s spinning vs 3.7 passive at load 8 on 2 cores); every model gets the same setting.
* Peak memory: the increase of the process's resident set during the first forward pass of the batch,
  over the resident set after the model and the input exist (weights excluded), with the heap memory
  freed while building the model first returned to the OS (glibc ``malloc_trim``), since the forward
  pass would otherwise reuse those already-resident pages unseen. The peak is Linux's
  ``VmHWM``, reset just before the pass by writing ``5`` to ``/proc/self/clear_refs``; the first pass
  is used because later passes reuse memory the allocator kept. It therefore includes the runtime's
  one-time allocations (oneDNN primitives, thread pools), a roughly constant offset, which is why small
  and large variants differ little at 224. Other platforms report no memory.
* GFLOPs: multiply-adds of one image at that size (``medvit.models.registry.count_gmacs``, the torch
  flop counter on the meta device), the unit papers call GFLOPs.

Sizes other than 224 pass ``img_size`` to the models built for one size (Swin keeps its 7x7 windows
and pads them; MaxViT and ACC-ViT set their window to ``img_size // 32``); the others take any size.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import gc
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

_logger = logging.getLogger("medvit.benchmarks.backbones")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_SIZES = (224, 384, 512, 768)


@dataclass
class BenchRow:
    """One measured (model, input size)."""

    model: str
    size: int
    params_m: float
    gflops: float
    batch: int
    threads: int
    timed_iters: int
    mean_s_per_batch: float
    best_s_per_batch: float
    images_per_s_mean: float
    images_per_s_best: float
    peak_mem_mb: float | None
    load_1min: float
    torch: str
    error: str = ""


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``), so the baseline holds no reusable memory."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(name: str, size: int, batch: int, threads: int, warmup: int, iters: int) -> BenchRow:
    """Measure one model at one size in this process (see the module docstring)."""
    import torch

    from medvit.models import create_model
    from medvit.models.registry import count_gmacs, count_parameters

    torch.set_num_threads(threads)
    load = os.getloadavg()[0]
    kwargs = {"img_size": size} if size != 224 else {}
    with torch.device("meta"):
        meta_model = create_model(name, **kwargs).eval()
        params = count_parameters(meta_model)
        gflops = count_gmacs(meta_model, (3, size, size))
    del meta_model
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    x = torch.randn(batch, 3, size, size)
    gc.collect()
    _release_free_heap()
    peak_mb = None
    with torch.inference_mode():
        rss_before = _proc_status_kb("VmRSS")
        if rss_before is not None and _reset_peak_rss():
            model(x)
            peak_mb = (_proc_status_kb("VmHWM") - rss_before) / 1024
        else:
            model(x)
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    mean_s = sum(times) / len(times) if times else float("nan")
    best_s = min(times) if times else float("nan")
    return BenchRow(
        model=name, size=size, params_m=params / 1e6, gflops=gflops, batch=batch, threads=threads,
        timed_iters=len(times), mean_s_per_batch=mean_s, best_s_per_batch=best_s,
        images_per_s_mean=batch / mean_s, images_per_s_best=batch / best_s, peak_mem_mb=peak_mb,
        load_1min=load, torch=torch.__version__,
    )


def _run_worker(name: str, size: int, args: argparse.Namespace) -> BenchRow:
    command = [
        sys.executable, __file__, "--worker", name, str(size), "--batch", str(args.batch),
        "--threads", str(args.threads), "--warmup", str(args.warmup), "--iters", str(args.iters),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["exit code %d" % done.returncode])[-1]
        _logger.warning("%s @%d failed: %s", name, size, reason)
        return BenchRow(name, size, float("nan"), float("nan"), args.batch, args.threads, 0, float("nan"),
                        float("nan"), float("nan"), float("nan"), None, os.getloadavg()[0], "", error=reason[:200])
    return BenchRow(**json.loads(done.stdout.strip().splitlines()[-1]))


def _pool(rows: Sequence[BenchRow]) -> BenchRow:
    """Pool the timed batches of several rounds of one (model, size)."""
    ok = [r for r in rows if not r.error and r.timed_iters]
    if len(ok) < 2:
        return ok[0] if ok else rows[-1]
    total_iters = sum(r.timed_iters for r in ok)
    mean_s = sum(r.mean_s_per_batch * r.timed_iters for r in ok) / total_iters
    best_s = min(r.best_s_per_batch for r in ok)
    first = ok[0]
    return BenchRow(
        **{**asdict(first), "timed_iters": total_iters, "mean_s_per_batch": mean_s, "best_s_per_batch": best_s,
           "images_per_s_mean": first.batch / mean_s, "images_per_s_best": first.batch / best_s,
           "load_1min": sum(r.load_1min for r in ok) / len(ok)}
    )


def read_rows(path: Path) -> list[BenchRow]:
    """Rows of an existing ``backbones.csv``."""
    if not path.is_file():
        return []
    types = {f.name: f.type for f in fields(BenchRow)}
    rows = []
    with open(path, newline="") as handle:
        for record in csv.DictReader(handle):
            values = {}
            for key, value in record.items():
                kind = types[key]
                if kind == "int":
                    values[key] = int(value)
                elif kind in ("float", "float | None"):
                    values[key] = float(value) if value not in ("", "None") else None
                else:
                    values[key] = value
            rows.append(BenchRow(**values))
    return rows


def write_results(rows: Sequence[BenchRow], out_dir: Path, note: str) -> tuple[Path, Path]:
    """Write ``backbones.csv`` and the Markdown table ``backbones.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "backbones.csv", out_dir / "backbones.md"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(BenchRow)])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in asdict(row).items()})
    md_path.write_text(format_markdown(rows, note))
    return csv_path, md_path


def format_markdown(rows: Sequence[BenchRow], note: str) -> str:
    """The benchmark as Markdown: one table of all rows, then the targets the issue sets."""
    lines = [
        "| model | size | params (M) | GFLOPs | img/s best | img/s mean | peak mem (MB) | MB per Mpx | load (1 min) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.error:
            lines.append(f"| {r.model} | {r.size} | - | - | - | - | - | - | error: {r.error} |")
            continue
        mem = f"{r.peak_mem_mb:.0f}" if r.peak_mem_mb is not None else "-"
        per_mpx = f"{r.peak_mem_mb / (r.batch * r.size * r.size / 1e6):.0f}" if r.peak_mem_mb is not None else "-"
        best = f"{r.images_per_s_best:.1f}" if r.timed_iters else "-"
        mean = f"{r.images_per_s_mean:.1f}" if r.timed_iters else "-"
        lines.append(
            f"| {r.model} | {r.size} | {r.params_m:.2f} | {r.gflops:.2f} | {best} | {mean} | {mem} | {per_mpx} | "
            f"{r.load_1min:.1f} |"
        )
    by_key = {(r.model, r.size): r for r in rows if not r.error}
    targets = []
    for ours, reference, factor in (("vvt_tiny", "pvt_v2_b1", 0.79), ("acc_vit_tiny", "maxvit_tiny_tf_224", 1.0)):
        a, b = by_key.get((ours, 224)), by_key.get((reference, 224))
        if a and b and a.timed_iters and b.timed_iters:
            best, mean = a.images_per_s_best / b.images_per_s_best, a.images_per_s_mean / b.images_per_s_mean
            verdict = "met" if best >= factor else "NOT met"
            targets.append(
                f"- {ours} / {reference} at 224: {best:.2f}x (best), {mean:.2f}x (mean); target >= {factor}x: {verdict}"
            )
    for model in dict.fromkeys(r.model for r in rows):
        sizes = sorted((r.size, r.peak_mem_mb) for r in rows if r.model == model and not r.error and r.peak_mem_mb)
        if len(sizes) > 1:
            base_size, base_mem = sizes[0]
            ratios = ", ".join(f"{s}: {m / base_mem:.2f}x memory / {(s / base_size) ** 2:.2f}x pixels" for s, m in sizes[1:])
            targets.append(f"- {model} peak memory vs {base_size}: {ratios}")
    text = "\n".join(lines) + "\n"
    if targets:
        text += "\nTargets:\n\n" + "\n".join(targets) + "\n"
    return text + f"\n{note}\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=None, help="curated names (default: all; none: measure nothing)")
    parser.add_argument("--sizes", nargs="+", type=int, default=list(DEFAULT_SIZES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5, help="timed batches (0: peak memory only)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the list, pooling timed batches")
    parser.add_argument("--quick", action="store_true", help="1 warm-up, 2 timed batches, size 224 only")
    parser.add_argument("--merge", action="store_true", help="keep rows of the existing CSV not re-measured")
    parser.add_argument("--include", nargs="+", type=Path, default=[], help="also keep the rows of these CSVs")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        row = measure(args.worker[0], int(args.worker[1]), args.batch, args.threads, args.warmup, args.iters)
        print(json.dumps(asdict(row)))
        return 0

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from medvit.models import list_models

    if args.quick:
        args.warmup, args.iters, args.sizes = 1, 2, [224]
    names = [info.name for info in list_models()] if args.models is None else args.models
    order = {info.name: i for i, info in enumerate(list_models())}
    measured: dict[tuple[str, int], list[BenchRow]] = {}
    for round_index in range(args.rounds):
        for size in args.sizes:
            for name in names:
                row = _run_worker(name, size, args)
                measured.setdefault((name, size), []).append(row)
                _logger.info(
                    "round %d %s @%d: %.1f img/s best, %.1f mean, peak %s MB (load %.1f)%s", round_index + 1,
                    name, size, row.images_per_s_best, row.images_per_s_mean,
                    f"{row.peak_mem_mb:.0f}" if row.peak_mem_mb is not None else "-", row.load_1min,
                    f" ERROR {row.error}" if row.error else "",
                )
    rows = {key: _pool(value) for key, value in measured.items()}
    previous = [args.out_dir / "backbones.csv"] if args.merge else []
    for path in [*args.include, *previous]:
        for old in read_rows(path):
            rows.setdefault((old.model, old.size), old)
    ordered = sorted(rows.values(), key=lambda r: (order.get(r.model, len(order)), r.model, r.size))
    note = (
        f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible; batch {args.batch}, "
        f"{args.threads} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}, inference_mode. Regenerate: `.venv/bin/python experiments/benchmarks/backbones.py`"
        " (see its docstring for the method)."
    )
    csv_path, md_path = write_results(ordered, args.out_dir, note)
    _logger.info("wrote %s and %s", csv_path, md_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
