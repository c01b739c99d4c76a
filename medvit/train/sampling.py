"""Training data whose order and augmentation are functions of ``(seed, epoch)``.

``EpochSampler`` gives every epoch its own seeded order, identical in its global batches for any
number of DDP processes; ``SeededDataset`` re-seeds the MONAI random transforms per image from
``(seed, epoch, index)``. Together they make an epoch replay exactly after a resume.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from medvit.data.loaders import create_dataset
from medvit.train.distributed import DistContext

__all__ = ["EpochSampler", "SeededDataset", "SplitData", "build_loader", "dataset_records", "load_split", "mix_seed"]

_logger = logging.getLogger(__name__)


def mix_seed(*values: int) -> int:
    """A 32-bit seed derived from several integers (``np.random.SeedSequence``)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0])


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` (also for one process) with optional class-balanced sampling.

    The global order of epoch ``e`` is ``randperm(N)`` (or ``multinomial(weights, N)`` when
    ``weights`` is given) under a generator seeded with ``(seed, e)``; rank ``r`` takes every
    ``world_size``-th index from ``r``. Global batch ``k`` therefore holds the same images for any
    number of processes, and an epoch's order does not depend on earlier epochs.

    Args:
        dataset: the dataset (only its length is used).
        num_replicas, rank: DDP world size and rank.
        shuffle: random order (training) or sequential (evaluation).
        seed: base seed.
        weights: (N,) per-sample weights for sampling with replacement (balanced sampler).
        epoch_size: images per epoch (``None``: N): a seeded random subset of that size, or that many
            weighted draws.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        weights: torch.Tensor | None = None,
        epoch_size: int | None = None,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        if epoch_size is None or not shuffle:
            self.epoch_size = len(dataset)
        elif self.weights is None:
            self.epoch_size = min(int(epoch_size), len(dataset))  # a subset without replacement
        else:
            self.epoch_size = int(epoch_size)  # draws with replacement
        self.num_samples = math.ceil(self.epoch_size / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def global_order(self) -> list[int]:
        """All ranks' indices of this epoch (before padding)."""
        n = len(self.dataset)
        if not self.shuffle:
            return list(range(n))
        g = torch.Generator()
        g.manual_seed(mix_seed(self.seed, self.epoch))
        if self.weights is not None:
            return torch.multinomial(self.weights, self.epoch_size, replacement=True, generator=g).tolist()
        return torch.randperm(n, generator=g)[:self.epoch_size].tolist()

    def __iter__(self) -> Iterator[int]:
        indices = self.global_order()
        padding = self.total_size - len(indices)
        if padding > 0:
            indices += (indices * math.ceil(padding / len(indices)))[:padding]
        return iter(indices[self.rank:self.total_size:self.num_replicas])


class SeededDataset(Dataset):
    """Re-seeds the random transforms before each sample with ``(seed, epoch, index)``.

    MONAI ``Randomizable`` transforms draw from their own ``RandomState``; re-seeding it per sample
    makes augmentation independent of worker count, world size and resume point.
    Each item also carries ``"index"`` so gathered predictions can be put back in dataset order.
    """

    def __init__(self, dataset: Dataset, seed: int, epoch: int, augment: bool) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = epoch
        self.transform = getattr(dataset, "transform", None)
        self.augment = augment and hasattr(self.transform, "set_random_state")
        if augment and not self.augment:
            _logger.warning(
                "training dataset %s has no seedable transform; augmentation is not reproducible on resume",
                type(dataset).__name__,
            )

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        if self.augment:
            self.transform.set_random_state(seed=mix_seed(self.seed, self.epoch, index))
        item = self.dataset[index]
        if isinstance(item, dict):
            item = dict(item)
            item["index"] = index
        return item


def dataset_records(dataset: Dataset) -> list[dict]:
    """The input records of a MONAI-style dataset (``dataset.data``: dicts with image/label)."""
    data = getattr(dataset, "data", None)
    if data is None or not len(data) or not isinstance(data[0], dict):
        raise RuntimeError(
            f"{type(dataset).__name__} exposes no .data records with 'image'/'label'; "
            "medvit.data.loaders.create_dataset must return a MONAI Dataset over manifest records"
        )
    return list(data)


def build_loader(
    dataset: Dataset,
    collate_fn: Any,
    batch_size: int,
    ctx: DistContext,
    seed: int,
    epoch: int,
    train: bool,
    num_workers: int,
    weights: torch.Tensor | None = None,
    epoch_size: int | None = None,
) -> DataLoader:
    """A loader whose order and augmentation are functions of ``(seed, epoch)`` (``epoch_size``: see
    :class:`EpochSampler`)."""
    sampler = EpochSampler(
        dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=train, seed=seed, weights=weights,
        epoch_size=epoch_size,
    )
    sampler.set_epoch(epoch)
    per_rank = sampler.num_samples
    return DataLoader(
        SeededDataset(dataset, seed, epoch, augment=train),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        drop_last=train and per_rank > batch_size,
        pin_memory=ctx.device.type == "cuda",
        generator=torch.Generator().manual_seed(mix_seed(seed, epoch, 1)),
        persistent_workers=False,
    )


@dataclass
class SplitData:
    dataset: Dataset
    collate_fn: Any
    records: list[dict]

    @property
    def labels(self) -> np.ndarray:
        return np.array([int(r["label"]) for r in self.records], dtype=np.int64)


def load_split(
    manifest: str | Path,
    root: str | Path,
    split: str,
    image_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    preset: str,
    train: bool,
    seed: int,
    cache: bool,
    batch_size: int = 1,
) -> SplitData:
    """One split of a manifest as the engine's dataset (``seed`` and ``batch_size`` are not used here:
    the order and augmentation come from :func:`build_loader`)."""
    from monai.data import list_data_collate


    dataset = create_dataset(
        manifest, root, split, image_size=tuple(image_size), mean=tuple(mean), std=tuple(std), preset=preset,
        train=train, cache=cache,
    )
    if len(dataset) == 0:
        raise ValueError(f"{manifest}: split '{split}' is empty; re-run 'medvit prepare' with a non-zero {split} fraction")
    return SplitData(dataset, list_data_collate, dataset_records(dataset))
