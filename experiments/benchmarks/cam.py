"""Benchmark: four stage CAMs from one pass vs four separate pytorch-grad-cam runs (CPU).

For each backbone (random weights, 3 classes, batch 1, 224x224, ``torch.set_num_threads(2)``):

* ``separate_s``: four ``GradCAM(model, target_layers=[stage_k], reshape_transform=...)`` runs, one per
  stage (what pytorch-grad-cam alone needs for four per-stage maps);
* ``one_pass_s``: ``medvit.explain.compute_stage_cams`` (prediction + the four maps from one forward and
  one backward pass);
* ``predict_s``: the forward pass alone under ``torch.no_grad`` (context for ``one_pass_s``).

Each time is the best of ``--repeats`` runs after one warm-up (the CPU is shared; the best run is the
least disturbed one). Writes ``results/cam.csv`` and ``results/cam.md``.

Usage::

    .venv/bin/python experiments/benchmarks/cam.py [--models vvt_tiny acc_vit_tiny ...|all] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from medvit.explain import compute_stage_cams
from medvit.explain.cam import stage_reshape_transform
from medvit.models import create_model, list_models, pyramid_stages

_logger = logging.getLogger("medvit.benchmarks.cam")

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_MODELS = (
    "vvt_tiny",
    "acc_vit_tiny",
    "swin_tiny_patch4_window7_224",
    "convnext_tiny",
    "maxvit_tiny_tf_224",
    "pvt_v2_b1",
    "tf_efficientnet_lite0",
)


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def separate_runs(model: torch.nn.Module, image: torch.Tensor, target: int) -> list:
    """Four pytorch-grad-cam runs, one per stage, each with that stage's layout conversion."""
    size = tuple(image.shape[-2:])
    maps = []
    for stage in pyramid_stages(model):
        reshape = stage_reshape_transform(stage, size)
        with GradCAM(model, target_layers=[stage.module], reshape_transform=reshape) as cam:
            maps.append(cam(image, [ClassifierOutputTarget(target)]))
    return maps


def benchmark(name: str, size: tuple[int, int], repeats: int, method: str) -> dict:
    """Time one backbone."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, img_size=size).eval()
    image = torch.randn(1, 3, *size)
    target = 1

    def predict() -> None:
        with torch.no_grad():
            model(image)

    predict_s = best_time(predict, repeats)
    one_pass_s = best_time(lambda: compute_stage_cams(model, image, target=target, method=method), repeats)
    separate_s = best_time(lambda: separate_runs(model, image, target), repeats) if method == "gradcam" else float("nan")
    row = {
        "model": name,
        "input": f"{size[0]}x{size[1]}",
        "method": method,
        "predict_s": round(predict_s, 4),
        "one_pass_s": round(one_pass_s, 4),
        "separate_s": round(separate_s, 4),
        "speedup": round(separate_s / one_pass_s, 2),
    }
    _logger.info("%s", row)
    return row


def to_markdown(table: pd.DataFrame, repeats: int, load: tuple[float, float, float]) -> str:
    """The result table as Markdown, with the conditions of the run."""
    header = "| model | input | predict (s) | prediction + 4 CAMs, one pass (s) | 4 pytorch-grad-cam runs (s) | speed-up |"
    lines = [header, "|---|---|---|---|---|---|"]
    for row in table.itertuples(index=False):
        lines.append(
            f"| {row.model} | {row.input} | {row.predict_s:.3f} | {row.one_pass_s:.3f} | {row.separate_s:.3f} | "
            f"{row.speedup:.2f}x |"
        )
    lines.append("")
    lines.append(
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}), "
        f"{torch.get_num_threads()} threads, batch 1, Grad-CAM, random weights; best of {repeats} after a warm-up. "
        f"Load average at the end {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} (the benchmark's own threads count; "
        "above ~2 the machine was shared with other jobs)."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="backbone names, or 'all'")
    parser.add_argument("--size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    names = [info.name for info in list_models()] if args.models == ["all"] else args.models
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:  # the files are rewritten after each backbone, so a long run can be stopped
        rows.append(benchmark(name, tuple(args.size), args.repeats, args.method))
        table = pd.DataFrame(rows)
        table.to_csv(args.out / "cam.csv", index=False)
        (args.out / "cam.md").write_text(to_markdown(table, args.repeats, os.getloadavg()))
    print(to_markdown(table, args.repeats, os.getloadavg()))


if __name__ == "__main__":
    main()
