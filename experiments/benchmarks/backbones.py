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
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Sequence

from harness import (
    BenchRow, add_common_arguments, format_markdown, measure_peak_rss_mb, merge_rows, run_rounds, worker_main,
    write_csv,
)

_logger = logging.getLogger("medvit.benchmarks.backbones")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_SIZES = (224, 384, 512, 768)
#: (ours, reference, factor): the inference speed each of our tiny models must reach, at 224.
TARGETS = (("vvt_tiny", "pvt_v2_b1", 0.79), ("acc_vit_tiny", "maxvit_tiny_tf_224", 1.0))


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
    with torch.inference_mode():
        peak_mb = measure_peak_rss_mb(lambda: model(x))
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


def write_results(rows: Sequence[BenchRow], out_dir: Path, note: str) -> tuple[Path, Path]:
    """Write ``backbones.csv`` and the Markdown table ``backbones.md``."""
    csv_path, md_path = write_csv(rows, out_dir / "backbones.csv"), out_dir / "backbones.md"
    md_path.write_text(format_markdown(rows, note, TARGETS, (224,)))
    return csv_path, md_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, DEFAULT_SIZES, batch=8, warmup=2, iters=5)
    parser.add_argument("--quick", action="store_true", help="1 warm-up, 2 timed batches, size 224 only")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args, measure)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from medvit.models import list_models

    if args.quick:
        args.warmup, args.iters, args.sizes = 1, 2, [224]
    names = [info.name for info in list_models()] if args.models is None else args.models
    order = {info.name: i for i, info in enumerate(list_models())}
    rows = run_rounds(Path(__file__).resolve(), names, args, _logger)
    previous = [args.out_dir / "backbones.csv"] if args.merge else []
    ordered = merge_rows(rows, [*args.include, *previous], order)
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
