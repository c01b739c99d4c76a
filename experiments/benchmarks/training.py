"""CPU benchmark of one training step (forward + backward + AdamW) of the tiny backbones, in each precision and
eager or compiled: images/s, compile time, peak memory, speed-up over fp32 eager and the targets of issue 24.

Writes ``results/training.csv`` and ``results/training.md`` next to this file (or under ``--out-dir``)::

    .venv/bin/python experiments/benchmarks/training.py             # 6 tiny backbones x 4 modes x 128/160/224
    .venv/bin/python experiments/benchmarks/training.py --quick     # one piece: 128 px, eager modes, merged
    .venv/bin/python experiments/benchmarks/training.py --models acc_vit_tiny maxvit_tiny_tf_224 \
        --modes fp32-eager bf16-eager --sizes 160 --rounds 2 --merge

Method: that of ``backbones.py`` (see its docstring; the shared machinery is ``harness.py``): every
(model, size, mode) in a fresh process, ``--rounds`` interleaved rounds whose timed steps are pooled,
passive OpenMP waiting, 2 threads. What differs:

* One step is what ``medvit train`` does per batch: train mode, ``cross_entropy`` on 1000 classes,
  ``zero_grad(set_to_none=True)``, forward and backward through the engine's
  :class:`medvit.train.acceleration.TrainStep` (``precision`` fp32 or bf16 autocast, ``compile`` through
  inductor), then the engine's optimiser (timm ``create_optimizer_v2(model, "adamw", weight_decay=0.05)``).
  Batch ``--batch`` (8) of random images and labels, ``--warmup`` untimed steps, ``--iters`` timed steps.
* Correctness: before its first step every worker computes the fp32 eager loss and gradients of the same
  weights and batch; the mode's first step is compared with them (``loss_rel_err``, and ``grad_cos``, the
  cosine between the flattened gradients). A mode counts as correct with ``grad_cos >= 0.999`` and a loss
  within 1% (bf16 rounds activations to 8 mantissa bits; fp32 compiled differs by reassociation only).
  A compilation that falls back to eager is reported as an error, not as a compiled row.
* Compile time: the first compiled step minus the median steady step.
* Peak memory: the resident-set increase during one steady step (after the first step, so compilation
  and AdamW's moment buffers are excluded; the gradients, freed before it, are included).
* GFLOPs: of one image's forward pass, as in ``backbones.py`` (a training step costs about three times that).
* Targets (issue 24), on each model's fastest correct mode at each size: ACC-ViT-T >= 1.3x MaxViT-T,
  VVT-T >= 0.8x pvt_v2_b1, and each of ACC-ViT-T, MaxViT-T, Swin-T, ConvNeXt-T >= 1.5x its own fp32 eager.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from harness import (
    BenchRow, add_common_arguments, measure_peak_rss_mb, merge_rows, run_rounds, worker_main, write_csv,
)

_logger = logging.getLogger("medvit.benchmarks.training")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_SIZES = (128, 160, 224)
DEFAULT_MODELS = (
    "acc_vit_tiny", "maxvit_tiny_tf_224", "swin_tiny_patch4_window7_224", "convnext_tiny", "vvt_tiny", "pvt_v2_b1",
)
MODES = ("fp32-eager", "bf16-eager", "fp32-compiled", "bf16-compiled")
QUICK_SIZES, QUICK_MODES = [128], ["fp32-eager", "bf16-eager"]
#: (ours, reference, factor): training speed of our tiny models against their baselines (issue 24), every size.
TARGETS = (("acc_vit_tiny", "maxvit_tiny_tf_224", 1.3), ("vvt_tiny", "pvt_v2_b1", 0.8))
#: models that must train this much faster in their fastest correct mode than in fp32 eager.
SELF_TARGETS = (("acc_vit_tiny", 1.5), ("maxvit_tiny_tf_224", 1.5), ("swin_tiny_patch4_window7_224", 1.5),
                ("convnext_tiny", 1.5))
MIN_GRAD_COS, MAX_LOSS_REL_ERR = 0.999, 0.01
NUM_CLASSES = 1000


def parse_mode(mode: str) -> tuple[str, bool]:
    """``"bf16-compiled"`` -> ``("bf16", True)``."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    precision, how = mode.split("-")
    return precision, how == "compiled"


def is_correct(row: BenchRow) -> bool:
    """Whether a measured row's first step matched fp32 eager (see the module docstring)."""
    if row.error or not row.timed_iters:
        return False
    if row.mode in ("", "fp32-eager"):
        return True
    return (row.grad_cos is not None and row.grad_cos >= MIN_GRAD_COS and row.loss_rel_err is not None
            and row.loss_rel_err <= MAX_LOSS_REL_ERR)


def training_step(
        model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
        step: Callable[[Callable[[nn.Module], torch.Tensor]], torch.Tensor] | None = None,
) -> float:
    """One optimiser step on one batch; returns the loss.

    Args:
        model: A classifier in train mode.
        optimizer: Its optimiser.
        images: (B, 3, H, W).
        labels: (B,) class indices.
        step: forward + backward of a loss function (the engine's ``TrainStep``); plain fp32 eager if None.
    """
    optimizer.zero_grad(set_to_none=True)
    if step is None:
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
    else:
        loss = step(lambda net: F.cross_entropy(net(images), labels))
    optimizer.step()
    return loss.item()


def _flat_grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten().double() for p in model.parameters() if p.grad is not None])


def measure(
        name: str, size: int, batch: int, threads: int, warmup: int, iters: int, mode: str = "fp32-eager",
) -> BenchRow:
    """Measure one model's training step at one size in one mode, in this process (see the module docstring)."""
    from timm.optim import create_optimizer_v2

    from medvit.models import create_model
    from medvit.models.registry import count_gmacs, count_parameters
    from medvit.train.acceleration import TrainStep

    precision, compile = parse_mode(mode)
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
    # the fp32 eager reference of the first step (same weights, batch and RNG state)
    rng = torch.get_rng_state()
    reference_loss = F.cross_entropy(model(images), labels)
    reference_loss.backward()
    reference = _flat_grads(model)
    model.zero_grad(set_to_none=True)
    torch.set_rng_state(rng)
    step = TrainStep(model, torch.device("cpu"), precision, compile)
    start = time.perf_counter()
    loss = step(lambda net: F.cross_entropy(net(images), labels))
    first_s = time.perf_counter() - start
    error = f"compile fell back to eager: {step.fallback_reason}" if compile and not step.compiled else ""
    grads = _flat_grads(model)
    grad_cos = float(F.cosine_similarity(grads, reference, dim=0))
    loss_rel_err = abs(loss.item() - reference_loss.item()) / max(abs(reference_loss.item()), 1e-12)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # the measured step allocates the gradients afresh
    peak_mb = measure_peak_rss_mb(lambda: training_step(model, optimizer, images, labels, step))
    for _ in range(warmup):
        training_step(model, optimizer, images, labels, step)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        training_step(model, optimizer, images, labels, step)
        times.append(time.perf_counter() - start)
    mean_s = sum(times) / len(times) if times else float("nan")
    best_s = min(times) if times else float("nan")
    median_s = sorted(times)[len(times) // 2] if times else float("nan")
    return BenchRow(
        model=name, size=size, params_m=params / 1e6, gflops=gflops, batch=batch, threads=threads,
        timed_iters=len(times), mean_s_per_batch=mean_s, best_s_per_batch=best_s,
        images_per_s_mean=batch / mean_s, images_per_s_best=batch / best_s, peak_mem_mb=peak_mb,
        load_1min=load, torch=torch.__version__, error=error, mode=mode,
        compile_s=max(0.0, first_s - median_s) if compile and not math.isnan(median_s) else None,
        loss_rel_err=loss_rel_err, grad_cos=grad_cos,
    )


def fastest_correct(rows: Sequence[BenchRow], model: str, size: int) -> BenchRow | None:
    """The correct row of (model, size) with the most images/s (best batch), or None."""
    candidates = [r for r in rows if r.model == model and r.size == size and is_correct(r)]
    return max(candidates, key=lambda r: r.images_per_s_best, default=None)


def format_markdown(rows: Sequence[BenchRow], note: str) -> str:
    """The table of all rows (speed-up against the same model's fp32 eager), then each model's fastest correct
    mode and the targets at every size where both sides were measured."""
    fp32 = {(r.model, r.size): r for r in rows if r.mode == "fp32-eager" and is_correct(r)}
    lines = [
        "| model | size | mode | img/s best | img/s mean | vs fp32 eager | compile (s) | peak mem (MB) | "
        "grad cos | loss err | load (1 min) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.error or not r.timed_iters:
            lines.append(f"| {r.model} | {r.size} | {r.mode} | - | - | - | - | - | - | - | error: {r.error} |")
            continue
        base = fp32.get((r.model, r.size))
        speedup = f"{r.images_per_s_best / base.images_per_s_best:.2f}x" if base else "-"
        compile_s = f"{r.compile_s:.0f}" if r.compile_s is not None else "-"
        mem = f"{r.peak_mem_mb:.0f}" if r.peak_mem_mb is not None else "-"
        cos = f"{r.grad_cos:.5f}" if r.grad_cos is not None else "-"
        err = f"{r.loss_rel_err:.1e}" if r.loss_rel_err is not None else "-"
        flag = "" if is_correct(r) else " (incorrect)"
        lines.append(
            f"| {r.model} | {r.size} | {r.mode}{flag} | {r.images_per_s_best:.2f} | {r.images_per_s_mean:.2f} | "
            f"{speedup} | {compile_s} | {mem} | {cos} | {err} | {r.load_1min:.1f} |")
    sizes = sorted({r.size for r in rows})
    models = list(dict.fromkeys(r.model for r in rows))
    verdicts = []
    for size in sizes:
        best = {m: fastest_correct(rows, m, size) for m in models}
        found = ", ".join(f"{m} {b.mode} {b.images_per_s_best:.2f}" for m, b in best.items() if b)
        if found:
            verdicts.append(f"- fastest correct mode at {size} (img/s): {found}")
        for ours, reference, factor in TARGETS:
            a, b = best.get(ours), best.get(reference)
            if a and b:
                ratio = a.images_per_s_best / b.images_per_s_best
                verdicts.append(f"- {ours} ({a.mode}) / {reference} ({b.mode}) at {size}: {ratio:.2f}x; "
                                f"target >= {factor}x: {'met' if ratio >= factor else 'NOT met'}")
        for model, factor in SELF_TARGETS:
            a, base = best.get(model), fp32.get((model, size))
            if a and base:
                ratio = a.images_per_s_best / base.images_per_s_best
                verdicts.append(f"- {model} {a.mode} / fp32-eager at {size}: {ratio:.2f}x; "
                                f"target >= {factor}x: {'met' if ratio >= factor else 'NOT met'}")
    text = "\n".join(lines) + "\n"
    if verdicts:
        text += "\nTargets:\n\n" + "\n".join(verdicts) + "\n"
    missing = missing_runs(rows)
    if missing:
        text += "\nNot measured (each line is the command that adds its rows):\n\n" + "\n".join(
            f"- {model} {mode} at {', '.join(map(str, sizes))}: `.venv/bin/python experiments/benchmarks/training.py "
            f"--models {model} --modes {mode} --sizes {' '.join(map(str, sizes))} --merge`"
            for model, mode, sizes in missing) + "\n"
    return text + f"\n{note}\n"


def missing_runs(rows: Sequence[BenchRow]) -> list[tuple[str, str, list[int]]]:
    """The (model, mode, sizes) of the full grid (default models x modes x sizes) with no row, failed ones
    included, in grid order."""
    have = {(r.model, r.size, r.mode) for r in rows if not r.error and r.timed_iters}
    missing = []
    for model in DEFAULT_MODELS:
        for mode in MODES:
            sizes = [s for s in DEFAULT_SIZES if (model, s, mode) not in have]
            if sizes:
                missing.append((model, mode, sizes))
    return missing


def write_results(rows: Sequence[BenchRow], out_dir: Path, note: str) -> tuple[Path, Path]:
    """Write ``training.csv`` and the Markdown table ``training.md`` (targets at every measured size)."""
    csv_path, md_path = write_csv(rows, out_dir / "training.csv"), out_dir / "training.md"
    md_path.write_text(format_markdown(rows, note))
    return csv_path, md_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, DEFAULT_SIZES, batch=8, warmup=1, iters=3)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="precision-{eager,compiled} modes to measure (default: all four)")
    parser.add_argument("--quick", action="store_true",
                        help="a piece of the grid: 128 px, eager modes, merged into the existing table (explicit "
                             "--sizes/--modes win)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args, measure)
    if args.quick:
        args.sizes = QUICK_SIZES if args.sizes == list(DEFAULT_SIZES) else args.sizes
        args.modes = QUICK_MODES if args.modes == list(MODES) else args.modes
        args.merge = True

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from medvit.models import list_models

    names = list(DEFAULT_MODELS) if args.models is None else args.models
    order = {info.name: i for i, info in enumerate(list_models())}
    rows = run_rounds(Path(__file__).resolve(), names, args, _logger, modes=args.modes)
    previous = [args.out_dir / "training.csv"] if args.merge else []
    ordered = merge_rows(rows, [*args.include, *previous], order, mode_order=MODES)
    note = (
        f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible; batch {args.batch}, "
        f"{args.threads} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}, "
        "forward + backward (engine's TrainStep) + AdamW step. Load (1 min) is the machine's load average when "
        "each worker started: other jobs share the cores, so compare speeds within one run, not across runs. "
        "Regenerate: `.venv/bin/python experiments/benchmarks/training.py` (the full grid; `--quick` for 128 px "
        "eager; see its docstring for the method)."
    )
    csv_path, md_path = write_results(ordered, args.out_dir, note)
    _logger.info("wrote %s and %s", csv_path, md_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
