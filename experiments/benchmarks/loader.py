"""CPU benchmark of the training input pipeline against the model step: end-to-end epoch time over step time.

Issue 24's loader target: at the study's image size (128 px), an epoch on the BUSI and HAM10000 pools (loader +
training step, as ``medvit train`` runs it) takes at most 1.2x the time of its training steps alone. Writes
``results/loader.csv`` and ``results/loader.md`` next to this file (or under ``--out-dir``)::

    .venv/bin/python experiments/benchmarks/loader.py                     # busi + ham10000, convnext_tiny, 256 images
    .venv/bin/python experiments/benchmarks/loader.py --datasets busi --images 128 --workers 0 --cache on

Method, per dataset and loader setting (``--cache`` on/off x ``--workers``), in one process:

* The data are ``--images`` training images of the pool's manifest (a seeded sample of its train split), loaded
  with the engine's own code: :func:`medvit.train.sampling.load_split` (the dataset's preset, the backbone's
  mean/std, ``cache``) and :func:`medvit.train.sampling.build_loader` (epoch-seeded sampler and augmentation).
  ``fill_s`` is the dataset's construction (with the cache, decoding and resizing every image once).
* The step is the engine's: ``TrainStep`` (fp32 eager, the default on this CPU), cross-entropy, timm AdamW,
  batch ``--batch``, 2 threads.
* ``epoch_s``: one epoch as the engine runs it (iterate the loader, step each batch), with ``data_wait_s`` the
  time spent waiting for batches. ``step_s``: the same number of steps on batches already in memory.
  ``ratio = epoch_s / step_s``. Each setting runs ``--rounds`` (epoch, step-only) pairs, interleaved; the table
  keeps the smallest of each (the run least disturbed by other jobs on the machine).
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

_logger = logging.getLogger("medvit.benchmarks.loader")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[2]
#: the pools of the transfer study (experiments/study/cpu.yaml): manifest and raw folder, relative to the repo
POOLS = {
    "busi": ("data_manifests/busi_pool.csv", "../shared/datasets/pools/busi_256"),
    "ham10000": ("data_manifests/ham10000_pool.csv", "../shared/datasets/pools/ham10000_200x150"),
}
TARGET_RATIO = 1.2


@dataclass
class LoaderRow:
    dataset: str
    model: str
    size: int
    images: int
    batch: int
    cache: bool
    workers: int
    fill_s: float
    epoch_s: float
    data_wait_s: float
    step_s: float
    ratio: float
    load_1min: float


def sample_manifest(manifest: Path, images: int, seed: int = 0):
    """The manifest with its train split cut to a seeded sample of ``images`` rows (val/test dropped)."""
    from medvit.data.manifest import read_manifest

    frame = read_manifest(manifest)
    train = frame[frame["split"] == "train"]
    return train.sample(n=min(images, len(train)), random_state=seed).reset_index(drop=True)


def measure(
        dataset: str, manifest: Path, root: Path, model_name: str, size: int, images: int, batch: int, cache: bool,
        workers: int, rounds: int, model_kwargs: dict | None = None,
) -> LoaderRow:
    """Epoch time against step time for one dataset and loader setting (see the module docstring).

    Args:
        dataset: name in the table.
        manifest: the dataset's manifest CSV (its side JSON gives classes and augmentation preset).
        root: the raw folder its paths are relative to.
        model_name: backbone; ``model_kwargs`` go to ``create_model``.
        size: image side.
        images: training images (a seeded sample of the train split).
        batch: batch size.
        cache: the engine's ``cache`` option.
        workers: the engine's ``num_workers``.
        rounds: (epoch, steps-alone) pairs.
    """
    from timm.data import resolve_model_data_config
    from timm.optim import create_optimizer_v2

    from medvit.data.manifest import read_manifest_info
    from medvit.models import create_model, get_model_info
    from medvit.train.acceleration import TrainStep
    from medvit.train.distributed import DistContext
    from medvit.train.sampling import build_loader, load_split

    info = read_manifest_info(manifest)
    num_classes = len(info["class_names"])
    torch.manual_seed(0)
    model_info = get_model_info(model_name)
    kwargs = {"img_size": [size, size]} if model_info is not None and model_info.takes_img_size else {}
    model = create_model(model_name, num_classes=num_classes, **kwargs, **(model_kwargs or {}))
    data_cfg = resolve_model_data_config(model)
    start = time.perf_counter()
    split = load_split(
        sample_manifest(manifest, images), root, "train", (size, size),
        tuple(data_cfg["mean"]), tuple(data_cfg["std"]), info["preset"], train=True, seed=0, cache=cache,
    )
    fill_s = time.perf_counter() - start
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-4, weight_decay=0.05)
    criterion = nn.CrossEntropyLoss()
    step = TrainStep(model, torch.device("cpu"), "fp32", compile=False)
    model.train()

    def train_step(batch_data: dict) -> None:
        images_, labels = batch_data["image"], torch.as_tensor(batch_data["label"]).long()
        optimizer.zero_grad(set_to_none=True)
        step(lambda net: criterion(net(images_), labels))
        optimizer.step()

    def loader(epoch: int):
        return build_loader(split.dataset, split.collate_fn, batch, DistContext(), seed=0, epoch=epoch, train=True,
                            num_workers=workers)

    batches = list(loader(0))  # also the warm-up of the step: the first steps allocate
    for b in batches[:2]:
        train_step(b)
    epochs, waits, steps = [], [], []
    for round_index in range(rounds):
        start = waiting = time.perf_counter()
        wait = 0.0
        for b in loader(round_index + 1):
            wait += time.perf_counter() - waiting
            train_step(b)
            waiting = time.perf_counter()
        epochs.append(time.perf_counter() - start)
        waits.append(wait)
        start = time.perf_counter()
        for b in batches:
            train_step(b)
        steps.append(time.perf_counter() - start)
        _logger.info("%s cache=%s workers=%d round %d: epoch %.1f s (waited %.1f s), steps alone %.1f s",
                     dataset, cache, workers, round_index + 1, epochs[-1], wait, steps[-1])
    best = min(range(rounds), key=lambda i: epochs[i])
    return LoaderRow(
        dataset=dataset, model=model_name, size=size, images=len(split.dataset), batch=batch, cache=cache,
        workers=workers, fill_s=fill_s, epoch_s=epochs[best], data_wait_s=waits[best], step_s=min(steps),
        ratio=epochs[best] / min(steps), load_1min=os.getloadavg()[0],
    )


def format_markdown(rows: Sequence[LoaderRow], note: str) -> str:
    """The table, then the target's verdict per dataset (its best loader setting)."""
    lines = [
        "| dataset | model | size | images | cache | workers | fill (s) | epoch (s) | data wait (s) | steps alone (s) "
        "| epoch / steps | load (1 min) |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.dataset} | {r.model} | {r.size} | {r.images} | {'on' if r.cache else 'off'} | {r.workers} | "
            f"{r.fill_s:.1f} | {r.epoch_s:.1f} | {r.data_wait_s:.1f} | {r.step_s:.1f} | {r.ratio:.2f}x | "
            f"{r.load_1min:.1f} |")
    verdicts = []
    for dataset in dict.fromkeys(r.dataset for r in rows):
        best = min((r for r in rows if r.dataset == dataset), key=lambda r: r.ratio)
        verdicts.append(
            f"- {dataset}: {best.ratio:.2f}x with cache {'on' if best.cache else 'off'}, {best.workers} workers; "
            f"target <= {TARGET_RATIO}x: {'met' if best.ratio <= TARGET_RATIO else 'NOT met'}")
    return "\n".join(lines) + "\n\nTarget:\n\n" + "\n".join(verdicts) + f"\n\n{note}\n"


def write_results(rows: Sequence[LoaderRow], out_dir: Path, note: str) -> tuple[Path, Path]:
    """Write ``loader.csv`` and ``loader.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "loader.csv", out_dir / "loader.md"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(LoaderRow)])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in asdict(row).items()})
    md_path.write_text(format_markdown(rows, note))
    return csv_path, md_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(POOLS), default=list(POOLS))
    parser.add_argument("--model", default="convnext_tiny")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=256, help="training images per epoch (a seeded sample)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", nargs="+", choices=("on", "off"), default=["off", "on"])
    parser.add_argument("--workers", nargs="+", type=int, default=[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--root", type=Path, default=None, help="raw folder (default: the pool's, beside the repo)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # measure this checkout's medvit: Python puts the script's folder, not the repo, first on sys.path, and a
    # shared virtual environment may hold another checkout in editable mode
    sys.path.insert(0, str(REPO))
    torch.set_num_threads(args.threads)
    rows = [
        measure(dataset, REPO / POOLS[dataset][0], args.root or REPO / POOLS[dataset][1], args.model, args.size,
                args.images, args.batch, cache == "on", workers, args.rounds)
        for dataset in args.datasets for cache in args.cache for workers in args.workers
    ]
    note = (
        f"{os.cpu_count()} cores visible, {args.threads} threads, batch {args.batch}, fp32 eager, {args.rounds} rounds "
        "(smallest epoch and smallest steps-alone time). Load (1 min): other jobs share the cores. Regenerate: "
        "`.venv/bin/python experiments/benchmarks/loader.py` (see its docstring for the method)."
    )
    csv_path, md_path = write_results(rows, args.out_dir, note)
    _logger.info("wrote %s and %s", csv_path, md_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
