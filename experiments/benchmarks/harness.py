"""What the CPU benchmark scripts share: one row type, fresh-process workers, interleaved rounds, pooled
timings, peak resident memory and the CSV files.

``backbones.py`` (inference) and ``training.py`` (one optimiser step) differ only in what a worker
measures; the method (see ``backbones.py``'s docstring) lives here once.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import gc
import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Sequence

__all__ = [
    "BenchRow", "add_common_arguments", "failed_row", "format_markdown", "measure_peak_rss_mb", "merge_rows",
    "checkout_pythonpath", "pool_rows", "read_rows", "run_rounds", "run_worker", "worker_main", "write_csv",
]

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout whose medvit a worker measures


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
    mode: str = ""  # training.py: precision and eager/compiled, e.g. "bf16-compiled"; empty for inference
    compile_s: float | None = None
    loss_rel_err: float | None = None  # against fp32 eager, same weights and batch
    grad_cos: float | None = None


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


def measure_peak_rss_mb(fn: Callable[[], object]) -> float | None:
    """Call ``fn`` once; the increase of the resident set's peak over the resident set before it, in MB.

    Freed heap is returned to the OS first, so ``fn`` cannot reuse already-resident pages unseen.
    ``None`` (``fn`` still called) where Linux's ``VmHWM`` cannot be reset.
    """
    gc.collect()
    _release_free_heap()
    rss_before = _proc_status_kb("VmRSS")
    if rss_before is None or not _reset_peak_rss():
        fn()
        return None
    fn()
    return (_proc_status_kb("VmHWM") - rss_before) / 1024


def failed_row(name: str, size: int, batch: int, threads: int, reason: str, mode: str = "") -> BenchRow:
    """The row of a (model, size, mode) whose worker failed."""
    nan = float("nan")
    return BenchRow(name, size, nan, nan, batch, threads, 0, nan, nan, nan, nan, None, os.getloadavg()[0], "",
                    error=reason[:200], mode=mode)


def add_common_arguments(
        parser: argparse.ArgumentParser, sizes: Sequence[int], batch: int, warmup: int, iters: int,
) -> None:
    """The options every benchmark script takes (``--models``, ``--sizes``, ``--rounds``, ``--merge``, ...)."""
    parser.add_argument("--models", nargs="*", default=None, help="curated names (default: all; none: measure nothing)")
    parser.add_argument("--sizes", nargs="+", type=int, default=list(sizes))
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--iters", type=int, default=iters, help="timed batches (0: peak memory only)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the list, pooling timed batches")
    parser.add_argument("--merge", action="store_true", help="keep rows of the existing CSV not re-measured")
    parser.add_argument("--include", nargs="+", type=Path, default=[], help="also keep the rows of these CSVs")
    parser.add_argument("--timeout", type=float, default=None, help="seconds a worker may run (default: no limit)")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-mode", default="", help=argparse.SUPPRESS)


def worker_main(args: argparse.Namespace, measure: Callable[..., BenchRow]) -> int:
    """In a worker process: measure ``args.worker`` (in ``args.worker_mode`` if set) and print the row as
    the last line of JSON."""
    extra = {"mode": args.worker_mode} if args.worker_mode else {}
    row = measure(args.worker[0], int(args.worker[1]), args.batch, args.threads, args.warmup, args.iters, **extra)
    print(json.dumps(asdict(row)))
    return 0


def checkout_pythonpath() -> str:
    """``PYTHONPATH`` for a worker: this checkout's root first, so a worker measures the ``medvit`` next to the
    script, not another checkout's that a shared virtual environment installed in editable mode (a script's
    own folder, not the working directory, is what Python puts first on ``sys.path``)."""
    return os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])


def run_worker(
        script: Path, name: str, size: int, args: argparse.Namespace, logger: logging.Logger, mode: str = "",
) -> BenchRow:
    """Measure one (model, size[, mode]) in a fresh ``script --worker`` process (passive OpenMP waiting by
    default), killed after ``args.timeout`` seconds if set."""
    command = [
        sys.executable, str(script), "--worker", name, str(size), "--batch", str(args.batch),
        "--threads", str(args.threads), "--warmup", str(args.warmup), "--iters", str(args.iters),
    ] + (["--worker-mode", mode] if mode else [])
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", PYTHONPATH=checkout_pythonpath())
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=getattr(args, "timeout", None))
    except subprocess.TimeoutExpired:
        logger.warning("%s @%d %s: timed out after %.0f s", name, size, mode, args.timeout)
        return failed_row(name, size, args.batch, args.threads, f"timed out after {args.timeout:.0f} s", mode)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["exit code %d" % done.returncode])[-1]
        logger.warning("%s @%d %s failed: %s", name, size, mode, reason)
        return failed_row(name, size, args.batch, args.threads, reason, mode)
    return BenchRow(**json.loads(done.stdout.strip().splitlines()[-1]))


def pool_rows(rows: Sequence[BenchRow]) -> BenchRow:
    """Pool the timed batches of several rounds of one (model, size); peak memory from the first round."""
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


def run_rounds(
        script: Path, names: Sequence[str], args: argparse.Namespace, logger: logging.Logger,
        modes: Sequence[str] = ("",),
) -> dict[tuple[str, int, str], BenchRow]:
    """``args.rounds`` interleaved rounds over sizes, models and ``modes`` (one fresh worker each), pooled
    per (model, size, mode)."""
    measured: dict[tuple[str, int, str], list[BenchRow]] = {}
    for round_index in range(args.rounds):
        for size in args.sizes:
            for name, mode in ((n, m) for n in names for m in modes):
                row = run_worker(script, name, size, args, logger, mode)
                measured.setdefault((name, size, mode), []).append(row)
                logger.info(
                    "round %d %s @%d %s: %.2f img/s best, %.2f mean, peak %s MB (load %.1f)%s", round_index + 1,
                    name, size, mode, row.images_per_s_best, row.images_per_s_mean,
                    f"{row.peak_mem_mb:.0f}" if row.peak_mem_mb is not None else "-", row.load_1min,
                    f" ERROR {row.error}" if row.error else "",
                )
    return {key: pool_rows(value) for key, value in measured.items()}


def read_rows(path: Path) -> list[BenchRow]:
    """Rows of an existing results CSV (none if the file does not exist)."""
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


def merge_rows(
        rows: dict[tuple[str, int, str], BenchRow], previous: Sequence[Path], order: dict[str, int],
        mode_order: Sequence[str] = ("",),
) -> list[BenchRow]:
    """``rows`` plus the rows of the ``previous`` CSVs not re-measured, in registry, size, then mode order."""
    merged = dict(rows)
    for path in previous:
        for old in read_rows(path):
            merged.setdefault((old.model, old.size, old.mode), old)
    modes = {m: i for i, m in enumerate(mode_order)}
    return sorted(merged.values(), key=lambda r: (order.get(r.model, len(order)), r.model, r.size,
                                                  modes.get(r.mode, len(modes)), r.mode))


def write_csv(rows: Sequence[BenchRow], path: Path) -> Path:
    """Write ``rows`` as CSV (floats with 4 decimals)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(BenchRow)])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in asdict(row).items()})
    return path


def format_markdown(
        rows: Sequence[BenchRow], note: str, targets: Sequence[tuple[str, str, float]], target_sizes: Sequence[int],
) -> str:
    """One table of all rows, then each target ``(ours, reference, factor)`` at each of ``target_sizes``
    (speed ratio of the best and of the mean batch) and each model's peak memory against its smallest size."""
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
    verdicts = []
    for ours, reference, factor in targets:
        for size in target_sizes:
            a, b = by_key.get((ours, size)), by_key.get((reference, size))
            if a and b and a.timed_iters and b.timed_iters:
                best, mean = a.images_per_s_best / b.images_per_s_best, a.images_per_s_mean / b.images_per_s_mean
                verdict = "met" if best >= factor else "NOT met"
                verdicts.append(
                    f"- {ours} / {reference} at {size}: {best:.2f}x (best), {mean:.2f}x (mean); "
                    f"target >= {factor}x: {verdict}"
                )
    for model in dict.fromkeys(r.model for r in rows):
        sizes = sorted((r.size, r.peak_mem_mb) for r in rows if r.model == model and not r.error and r.peak_mem_mb)
        if len(sizes) > 1:
            base_size, base_mem = sizes[0]
            ratios = ", ".join(f"{s}: {m / base_mem:.2f}x memory / {(s / base_size) ** 2:.2f}x pixels" for s, m in sizes[1:])
            verdicts.append(f"- {model} peak memory vs {base_size}: {ratios}")
    text = "\n".join(lines) + "\n"
    if verdicts:
        text += "\nTargets:\n\n" + "\n".join(verdicts) + "\n"
    return text + f"\n{note}\n"
