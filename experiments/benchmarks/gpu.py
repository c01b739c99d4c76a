"""GPU check and benchmark of the zoo's backbones: CPU = CUDA outputs, stage-CAM latency, bf16 throughput.

For each backbone (random weights, seed 0, 3 classes, 224x224) on one CUDA device:

* ``logit_diff``: max |CPU - CUDA| of the logits of 2 random images, both fp32 (TF32 off), eval mode;
* ``cam_diff``: max |CPU - CUDA| over the four stage CAMs of ``medvit.explain.compute_stage_cams``
  (Grad-CAM, class 1) of one image, maps in [0, 1];
* ``cam_s``: prediction + four stage CAMs of one image on the GPU, best of 5 after a warm-up;
* ``infer_img_s``: inference images/s, batch ``--infer-batch`` (128), bf16 autocast, ``inference_mode``;
* ``train_img_s``: training images/s of full AdamW steps (forward, cross-entropy, backward, step),
  batch ``--train-batch`` (64), bf16 autocast, and the peak CUDA memory of those steps.

Throughputs are timed over ``--iters`` (10) batches after 3 warm-up batches, with ``cuda.synchronize``
around the timed loop. Writes ``results/gpu.csv`` and ``results/gpu.md``; a model that fails gets its
error in the ``error`` column and the others still run. Needs a CUDA device (exits with status 2
otherwise)::

    python experiments/benchmarks/gpu.py [--models vvt_tiny acc_vit_tiny ...|all] [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from medvit.explain import compute_stage_cams
from medvit.models import create_model, list_models

_logger = logging.getLogger("medvit.benchmarks.gpu")

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_MODELS = (
    "vvt_tiny", "acc_vit_tiny", "swin_tiny_patch4_window7_224", "convnext_tiny", "maxvit_tiny_tf_224",
    "pvt_v2_b1", "tf_efficientnet_lite0",
)
NUM_CLASSES = 3


def images_per_s(step: Callable[[], object], batch: int, iters: int, warmup: int = 3) -> float:
    """Images/s of ``step`` (one batch per call) on the current CUDA device."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    torch.cuda.synchronize()
    return batch * iters / (time.perf_counter() - start)


def benchmark(name: str, infer_batch: int, train_batch: int, iters: int) -> dict:
    """One table row for backbone ``name`` (see the module docstring)."""
    row: dict = {"model": name}
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        cpu_logits = model(x)
    cpu_cams = compute_stage_cams(model, x[0], target=1)
    model = model.cuda()
    with torch.no_grad():
        cuda_logits = model(x.cuda()).cpu()
    cuda_cams = compute_stage_cams(model, x[0].cuda(), target=1)
    row["logit_diff"] = float((cuda_logits - cpu_logits).abs().max())
    row["cam_diff"] = max(float(np.abs(a - b).max()) for a, b in zip(cpu_cams.cams, cuda_cams.cams))

    image = x[0].cuda()
    compute_stage_cams(model, image)
    times = []
    for _ in range(5):
        torch.cuda.synchronize()
        start = time.perf_counter()
        compute_stage_cams(model, image)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    row["cam_s"] = min(times)

    batch = torch.randn(infer_batch, 3, 224, 224, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        row["infer_img_s"] = images_per_s(lambda: model(batch), infer_batch, iters)
    del batch

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(train_batch, 3, 224, 224, device="cuda")
    labels = torch.randint(0, NUM_CLASSES, (train_batch,), device="cuda")

    def train_step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    train_step()
    torch.cuda.reset_peak_memory_stats()
    row["train_img_s"] = images_per_s(train_step, train_batch, iters)
    row["train_peak_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return row


def to_markdown(table: pd.DataFrame, infer_batch: int, train_batch: int, iters: int) -> str:
    """The result table as Markdown, with the conditions of the run."""
    lines = [
        "| model | max abs logit diff CPU vs CUDA | max abs CAM diff | prediction + 4 CAMs (s) | "
        f"inference img/s (bf16, batch {infer_batch}) | training img/s (bf16, batch {train_batch}) | "
        "training peak memory (GiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in table.to_dict("records"):
        if isinstance(row.get("error"), str) and row["error"]:
            lines.append(f"| {row['model']} | error: {row['error']} | | | | | |")
            continue
        lines.append(
            f"| {row['model']} | {row['logit_diff']:.1e} | {row['cam_diff']:.1e} | {row['cam_s']:.3f} | "
            f"{row['infer_img_s']:,.0f} | {row['train_img_s']:,.0f} | {row['train_peak_gib']:.1f} |"
        )
    lines.append("")
    lines.append(
        f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, 224x224, random weights, {NUM_CLASSES} classes; "
        f"diffs in fp32 with TF32 off (CAMs are in [0, 1]); throughput over {iters} batches after warm-up. "
        "Regenerate: `python experiments/benchmarks/gpu.py`."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="backbone names, or 'all'")
    parser.add_argument("--infer-batch", type=int, default=128)
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not torch.cuda.is_available():
        print("experiments/benchmarks/gpu.py needs a CUDA device; none is visible (torch.cuda.is_available() is False)",
              file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    names = [info.name for info in list_models()] if args.models == ["all"] else args.models
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:  # the files are rewritten after each backbone, so a long run can be stopped
        try:
            rows.append(benchmark(name, args.infer_batch, args.train_batch, args.iters))
        except Exception as exc:  # one backbone's failure must not hide the others' results
            _logger.exception("%s failed", name)
            rows.append({"model": name, "error": f"{type(exc).__name__}: {exc}"})
        torch.cuda.empty_cache()
        table = pd.DataFrame(rows)
        table.to_csv(args.out / "gpu.csv", index=False)
        (args.out / "gpu.md").write_text(to_markdown(table, args.infer_batch, args.train_batch, args.iters))
        _logger.info("%s", rows[-1])
    print((args.out / "gpu.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
