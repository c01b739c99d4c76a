"""The pretraining pool: the union of the train splits of several manifests, with its augmentation.

Only rows whose ``split`` is ``train`` are read, so a distilled backbone has never seen an image
that a later fine-tuning run validates or tests on. Labels are dropped. The augmentation is a MONAI
pipeline (random resized crop, flips, colour jitter) seeded per image by
:class:`medvit.train.sampling.SeededDataset`, so an epoch replays exactly after a resume.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from monai.data import Dataset
from monai.transforms import Compose, EnsureTyped, NormalizeIntensityd, RandFlipd, RandScaleCropd

from medvit.boundary.manifest import require_valid_manifest
from medvit.data.manifest import manifest_hash, read_manifest, read_manifest_info
from medvit.data.transforms import LoadRGBImaged, RandColorJitterd, Resize2dd
from medvit.pretrain.config import DataSource

__all__ = ["Pool", "load_pool", "pool_dataset", "pretrain_transforms"]

_logger = logging.getLogger(__name__)


@dataclass
class Pool:
    """The pretraining images and where they come from.

    Attributes:
        records: ``{"image": absolute path, "path": absolute path}`` per image (no labels).
        sources: per manifest: ``manifest``, ``root`` (as given), ``manifest_hash``, ``dataset``,
            ``train_images`` (train rows) and ``used_images`` (after ``max_images``).
    """

    records: list[dict]
    sources: list[dict]

    @property
    def datasets(self) -> list[str]:
        return [str(s["dataset"]) for s in self.sources]


def _subset(rows: list[dict], size: int | None, rng: np.random.Generator) -> list[dict]:
    """A seeded random subset of ``size`` rows, in their manifest order (all rows when ``size`` is None)."""
    if size is None or size >= len(rows):
        return rows
    return [rows[i] for i in np.sort(rng.choice(len(rows), size=size, replace=False))]


def load_pool(
    sources: Sequence[DataSource], max_images: int | None = None, seed: int = 0, max_per_source: int | None = None
) -> Pool:
    """The train rows of every manifest in ``sources`` (optionally a seeded subset of them).

    Args:
        sources: manifests and their raw roots.
        max_images: keep a seeded random subset of this many images (each manifest keeps its share
            of the pool); ``None`` keeps all.
        seed: seed of the subsets.
        max_per_source: first keep at most this many train images of each manifest (so a large
            dataset does not crowd out a small one); ``None`` keeps all.

    Raises:
        FileNotFoundError: a manifest or root is missing.
        ValueError: a manifest has no train rows.
    """
    records: list[dict] = []
    described: list[dict] = []
    for source in sources:
        manifest, root = Path(source.manifest), Path(source.root)
        if not manifest.is_file():
            raise FileNotFoundError(f"config key 'data': manifest {manifest} not found; create it with 'medvit prepare'")
        if not root.is_dir():
            raise FileNotFoundError(
                f"config key 'data': root {root} of {manifest} is not a directory; "
                f"fix it in the YAML or with --set data.N.root=DIR"
            )
        require_valid_manifest(manifest, root)  # the checks of 'medvit prepare --check', before any image is read
        frame = read_manifest(manifest)
        train = frame[frame["split"] == "train"]
        if train.empty:
            raise ValueError(f"{manifest}: no train rows; re-run 'medvit prepare' (pretraining reads train rows only)")
        side = read_manifest_info(manifest)
        described.append({
            "manifest": source.manifest,
            "root": source.root,
            "manifest_hash": manifest_hash(manifest),
            "dataset": str(side.get("dataset", manifest.stem)),
            "train_images": int(len(train)),
        })
        rows = [{"image": str(root / rel), "path": str(root / rel)} for rel in train["image"]]  # contained: checked above
        records.append(_subset(rows, max_per_source, np.random.default_rng([seed, len(records)])))
    total = sum(len(r) for r in records)
    if max_images is not None and max_images < total:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(total, size=max_images, replace=False))
        offsets = np.cumsum([0] + [len(r) for r in records])
        records = [
            [r[i - offsets[k]] for i in keep[(keep >= offsets[k]) & (keep < offsets[k + 1])]]
            for k, r in enumerate(records)
        ]
    for entry, rows in zip(described, records):
        entry["used_images"] = len(rows)
    flat = [row for rows in records for row in rows]
    _logger.info(
        "pretraining pool: %d train images (%s)", len(flat),
        ", ".join(f"{d['dataset']} {d['used_images']}" for d in described),
    )
    return Pool(flat, described)


def pretrain_transforms(
    image_size: Sequence[int], mean: Sequence[float], std: Sequence[float], crop_scale: float = 0.6, vflip_prob: float = 0.0
) -> Compose:
    """Load, random resized crop, flips, colour jitter, normalise (the student's ``mean``/``std``).

    Args:
        image_size: output (H, W).
        mean, std: the student's input normalisation (the teacher's input is derived from it).
        crop_scale: each side of the crop is a random fraction in ``[crop_scale, 1]`` of the image's.
        vflip_prob: probability of an up-down flip (0 for ultrasound, where the probe is on top).
    """
    return Compose([
        LoadRGBImaged("image"),
        RandScaleCropd("image", roi_scale=crop_scale, max_roi_scale=1.0, random_center=True, random_size=True),
        Resize2dd("image", spatial_size=image_size, mode="bilinear"),
        RandFlipd("image", spatial_axis=1, prob=0.5),
        RandFlipd("image", spatial_axis=0, prob=vflip_prob),
        RandColorJitterd("image", prob=0.8, brightness=0.3, contrast=0.3, saturation=0.2, hue=0.02),
        NormalizeIntensityd("image", subtrahend=list(mean), divisor=list(std), channel_wise=True),
        EnsureTyped("image", data_type="tensor", dtype=torch.float32, track_meta=False),
    ])


def pool_dataset(pool: Pool, transform: Compose) -> Dataset:
    """A MONAI ``Dataset`` over the pool (``dataset.transform`` is seeded per image by the loader)."""
    return Dataset(pool.records, transform)
