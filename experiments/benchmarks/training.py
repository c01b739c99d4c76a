"""CPU benchmark of one training step (forward + backward + AdamW) of the tiny backbones: images/s and peak memory.

Writes ``results/training.csv`` and ``results/training.md`` next to this file (or under ``--out-dir``)::

    .venv/bin/python experiments/benchmarks/training.py                                 # 7 tiny backbones, 160 and 224
    .venv/bin/python experiments/benchmarks/training.py --models acc_vit_tiny maxvit_tiny_tf_224 --rounds 3 --merge

Method: that of ``backbones.py`` (see its docstring; the shared machinery is ``harness.py``): every
(model, size) in a fresh process, ``--rounds`` interleaved rounds whose timed steps are pooled, passive
OpenMP waiting, 2 threads. What differs:

* One step is what ``medvit train`` does per batch on the CPU: train mode, ``cross_entropy`` on 1000
  classes, ``zero_grad(set_to_none=True)``, ``backward``, then the engine's optimiser (timm
  ``create_optimizer_v2(model, "adamw", weight_decay=0.05)``, no weight decay on norms and biases).
  Batch ``--batch`` (16) of random images and labels, ``--warmup`` untimed steps, ``--iters`` timed steps.
* Peak memory: the resident-set increase during the first step, over the resident set after the model,
  the optimiser and the batch exist. It includes the gradients and AdamW's two moment buffers (allocated
  by that step: about 12 bytes per parameter), the activations kept for the backward pass and the
  runtime's one-time allocations.
* GFLOPs: of one image's forward pass, as in ``backbones.py`` (a training step costs about three times that).
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

import torch
import torch.nn.functional as F
from torch import nn

from harness import (
    BenchRow, add_common_arguments, format_markdown, measure_peak_rss_mb, merge_rows, run_rounds, worker_main,
    write_csv,
)

_logger = logging.getLogger("medvit.benchmarks.training")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_SIZES = (160, 224)
DEFAULT_MODELS = (
    "vvt_tiny", "pvt_v2_b1", "acc_vit_tiny", "maxvit_tiny_tf_224", "swin_tiny_patch4_window7_224", "convnext_tiny",
    "tf_efficientnet_lite0",
)
#: (ours, reference, factor): the training speed each of our tiny models must reach (issue 11), at every size.
TARGETS = (("acc_vit_tiny", "maxvit_tiny_tf_224", 1.3), ("vvt_tiny", "pvt_v2_b1", 0.8))
NUM_CLASSES = 1000


def training_step(
        model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
) -> float:
    """One optimiser step on one batch; returns the loss.

    Args:
        model: A classifier in train mode.
        optimizer: Its optimiser.
        images: (B, 3, H, W).
        labels: (B,) class indices.
    """
    loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def measure(name: str, size: int, batch: int, threads: int, warmup: int, iters: int) -> BenchRow:
    """Measure one model's training step at one size in this process (see the module docstring)."""
    from timm.optim import create_optimizer_v2

    from medvit.models import create_model
    from medvit.models.registry import count_gmacs, count_parameters

    torch.set_num_threads(threads)
    load = os.getloadavg()[0]
    kwargs = {"img_size": size} if size != 224 else {}
    with torch.device("meta"):
        meta_model = create_model(name, num_classes=NUM_CLASSES, **kwargs).eval()
        params = count_parameters(meta_model)
        gflops = count_gmacs(meta_model, (3, size, size))
    del meta_model
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES, **kwargs).train()
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-4, weight_decay=0.05)
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, NUM_CLASSES, (batch,))
    peak_mb = measure_peak_rss_mb(lambda: training_step(model, optimizer, images, labels))
    for _ in range(warmup):
        training_step(model, optimizer, images, labels)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        training_step(model, optimizer, images, labels)
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
    """Write ``training.csv`` and the Markdown table ``training.md`` (targets at every measured size)."""
    csv_path, md_path = write_csv(rows, out_dir / "training.csv"), out_dir / "training.md"
    sizes = sorted({r.size for r in rows})
    md_path.write_text(format_markdown(rows, note, TARGETS, sizes))
    return csv_path, md_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, DEFAULT_SIZES, batch=16, warmup=1, iters=3)
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args, measure)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from medvit.models import list_models

    names = list(DEFAULT_MODELS) if args.models is None else args.models
    order = {info.name: i for i, info in enumerate(list_models())}
    rows = run_rounds(Path(__file__).resolve(), names, args, _logger)
    previous = [args.out_dir / "training.csv"] if args.merge else []
    ordered = merge_rows(rows, [*args.include, *previous], order)
    note = (
        f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible; batch {args.batch}, "
        f"{args.threads} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}, "
        "forward + backward + AdamW step. Regenerate: `.venv/bin/python experiments/benchmarks/training.py` "
        "(see its docstring for the method)."
    )
    csv_path, md_path = write_results(ordered, args.out_dir, note)
    _logger.info("wrote %s and %s", csv_path, md_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
