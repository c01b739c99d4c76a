"""``DataLoader`` factory: a manifest split through the MONAI pipelines, seeded end to end."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from monai.data import CacheDataset, DataLoader, Dataset
from torch.utils.data import DistributedSampler, WeightedRandomSampler

from medvit.data.images import MASK_SEPARATOR
from medvit.data.manifest import SPLITS, read_manifest
from medvit.data.transforms import eval_transforms, train_transforms

__all__ = ["create_dataloader", "manifest_records"]

_logger = logging.getLogger(__name__)


def manifest_records(frame: pd.DataFrame, root: str | Path, split: str | None = None) -> list[dict]:
    """Data dicts for the MONAI pipelines: ``image``/``mask`` as absolute paths, ``label``, ``path``.

    Args:
        frame: a manifest (:func:`medvit.data.manifest.read_manifest`).
        root: the raw folder the manifest paths are relative to.
        split: keep only this split (``None``: all rows).

    Raises:
        ValueError: unknown split, or the split is empty.
    """
    root = Path(root)
    if split is not None:
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; choose one of {SPLITS}")
        frame = frame[frame["split"] == split]
        if frame.empty:
            raise ValueError(f"the manifest has no rows in split {split!r}; re-run 'medvit prepare' with --{split} > 0")
    has_mask = "mask" in frame.columns
    records = []
    for row in frame.itertuples(index=False):
        record = {"image": str(root / row.image), "label": int(row.label), "path": row.image}
        if has_mask:
            record["mask"] = MASK_SEPARATOR.join(str(root / rel) for rel in str(row.mask).split(MASK_SEPARATOR) if rel)
        records.append(record)
    return records


def create_dataloader(
    manifest: str | Path | pd.DataFrame,
    root: str | Path,
    split: str,
    image_size: Sequence[int] | int,
    mean: Sequence[float],
    std: Sequence[float],
    preset: str,
    batch_size: int,
    train: bool,
    num_workers: int = 0,
    seed: int = 0,
    balanced: bool = False,
    cache: bool = False,
    distributed: bool = False,
) -> DataLoader:
    """A MONAI ``DataLoader`` over one split of a manifest.

    Batches are dicts ``{"image": (B, 3, H, W) float, "label": (B,) long, "mask": (B, 1, H, W) float
    (when the manifest has masks), "path": list[str]}``. Randomness comes only from ``seed``: the
    shuffling/sampling ``torch.Generator`` and, through MONAI's ``DataLoader``, the augmentation
    random state of the main process or of each worker (``monai.data.utils.worker_init_fn``).

    Args:
        manifest: manifest CSV path or its DataFrame.
        root: raw folder the manifest paths are relative to.
        split: ``train``, ``val`` or ``test``.
        image_size: output (H, W).
        mean: backbone mean (RGB, [0, 1] scale).
        std: backbone std.
        preset: augmentation preset (see :func:`medvit.data.transforms.train_transforms`).
        batch_size: images per batch (per process when distributed).
        train: augment, shuffle and drop the last incomplete batch; else the deterministic eval
            pipeline in manifest order.
        num_workers: loader worker processes.
        seed: seed of sampling and augmentation.
        balanced: sample classes equally often (``WeightedRandomSampler`` with replacement, weights
            1 / class count); train only, not with ``distributed``.
        cache: cache the deterministic part of the pipeline (load + resize) in memory with
            ``CacheDataset``.
        distributed: shard with ``DistributedSampler`` (call ``loader.sampler.set_epoch(epoch)``
            every epoch; needs an initialised process group).

    Raises:
        ValueError: bad split, empty split, or ``balanced`` with ``distributed``/eval.
    """
    frame = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest)
    records = manifest_records(frame, root, split)
    transform = (
        train_transforms(preset, image_size, mean, std) if train else eval_transforms(image_size, mean, std)
    )
    dataset = (
        CacheDataset(records, transform, cache_rate=1.0, num_workers=max(1, num_workers), progress=False)
        if cache
        else Dataset(records, transform)
    )
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    shuffle = train
    if balanced:
        if not train or distributed:
            raise ValueError("balanced=True needs train=True and distributed=False")
        labels = np.array([record["label"] for record in records])
        counts = np.bincount(labels)
        weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
        sampler = WeightedRandomSampler(weights, num_samples=len(records), replacement=True, generator=generator)
        shuffle = False
    elif distributed:
        sampler = DistributedSampler(dataset, shuffle=train, seed=seed, drop_last=train)
        shuffle = False
    drop_last = train and len(records) > batch_size
    _logger.info(
        "%s loader: %d images, batch %d, %s%s",
        split,
        len(records),
        batch_size,
        "train" if train else "eval",
        ", class-balanced" if balanced else "",
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        generator=generator,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )
