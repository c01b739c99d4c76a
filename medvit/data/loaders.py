"""``DataLoader`` factory: a manifest split through the MONAI pipelines, seeded end to end."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from monai.data import CacheDataset, DataLoader, Dataset

from medvit.boundary.manifest import require_valid_manifest
from medvit.boundary.paths import contained_path
from medvit.data.images import MASK_SEPARATOR, split_mask_paths
from medvit.data.manifest import SPLITS, read_manifest
from medvit.data.transforms import eval_transforms, train_transforms

__all__ = ["create_dataloader", "create_dataset", "manifest_records"]

_logger = logging.getLogger(__name__)


def manifest_records(frame: pd.DataFrame, root: str | Path, split: str | None = None) -> list[dict]:
    """Data dicts for the MONAI pipelines: ``image``/``mask`` as absolute paths, ``label``, ``path``.

    Args:
        frame: a manifest (:func:`medvit.data.manifest.read_manifest`).
        root: the raw folder the manifest paths are relative to.
        split: keep only this split (``None``: all rows).

    Raises:
        ValueError: unknown split, the split is empty, or a path leaves ``root``.
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
    for number, row in zip(frame.index, frame.itertuples(index=False)):
        where = f"manifest row {number + 2}"
        record = {"image": str(contained_path(root, row.image, where)), "label": int(row.label), "path": row.image}
        if has_mask:
            masks = split_mask_paths(str(row.mask))
            record["mask"] = MASK_SEPARATOR.join(str(contained_path(root, rel, where)) for rel in masks)
        records.append(record)
    return records


def create_dataset(
    manifest: str | Path | pd.DataFrame,
    root: str | Path,
    split: str,
    image_size: Sequence[int] | int,
    mean: Sequence[float],
    std: Sequence[float],
    preset: str,
    train: bool,
    cache: bool = False,
    num_workers: int = 0,
) -> Dataset:
    """A MONAI dataset over one split of a manifest, through the train or eval pipeline.

    Items are dicts ``{"image": (3, H, W) float, "label": int, "mask": (1, H, W) float (when the
    manifest has masks), "path": str}``. The training engine draws from it with its own
    epoch-seeded sampler (:func:`medvit.train.sampling.build_loader`).

    Args:
        manifest: manifest CSV path or its DataFrame.
        root: raw folder the manifest paths are relative to.
        split: ``train``, ``val`` or ``test``.
        image_size: output (H, W).
        mean: backbone mean (RGB, [0, 1] scale).
        std: backbone std.
        preset: augmentation preset (see :func:`medvit.data.transforms.train_transforms`).
        train: the augmenting pipeline; else the deterministic eval pipeline.
        cache: cache the deterministic part of the pipeline (load + resize) in memory with
            ``CacheDataset``.
        num_workers: threads that fill the cache.

    Raises:
        ManifestError: a manifest file that fails :func:`medvit.boundary.manifest.check_manifest` (a label
            out of range, an unknown split, a missing image, ...), before any image is read.
        ValueError: bad or empty split.
    """
    if not isinstance(manifest, pd.DataFrame):
        require_valid_manifest(manifest, root)
    frame = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest)
    records = manifest_records(frame, root, split)
    transform = (
        train_transforms(preset, image_size, mean, std) if train else eval_transforms(image_size, mean, std)
    )
    _logger.info("%s split: %d images, %s pipeline%s", split, len(records), "train" if train else "eval",
                 ", cached" if cache else "")
    if cache:
        return CacheDataset(records, transform, cache_rate=1.0, num_workers=max(1, num_workers), progress=False)
    return Dataset(records, transform)


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
    cache: bool = False,
) -> DataLoader:
    """A MONAI ``DataLoader`` over one split of a manifest (for scripts, explanations and notebooks).

    Batches are dicts ``{"image": (B, 3, H, W) float, "label": (B,) long, "mask": (B, 1, H, W) float
    (when the manifest has masks), "path": list[str]}``. Randomness comes only from ``seed``: the
    shuffling ``torch.Generator`` and, through MONAI's ``DataLoader``, the augmentation random state
    of the main process or of each worker (``monai.data.utils.worker_init_fn``). Training uses the
    same dataset (:func:`create_dataset`) with its epoch-seeded, DDP-aware sampler instead.

    Args:
        manifest, root, split, image_size, mean, std, preset, cache: as :func:`create_dataset`.
        batch_size: images per batch.
        train: augment, shuffle and drop the last incomplete batch; else the deterministic eval
            pipeline in manifest order.
        num_workers: loader worker processes.
        seed: seed of shuffling and augmentation.

    Raises:
        ValueError: bad or empty split.
    """
    dataset = create_dataset(manifest, root, split, image_size, mean, std, preset, train, cache, num_workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        drop_last=train and len(dataset) > batch_size,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )
