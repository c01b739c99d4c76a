"""Splitting a dataset: seeded, class-stratified, group-aware train/val/test assignment and its counts."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["SPLITS", "assign_folds", "assign_splits", "count_table"]

SPLITS = ("train", "val", "test")


def assign_splits(
    labels: Sequence[int],
    groups: Sequence[str],
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
) -> np.ndarray:
    """Seeded, class-stratified, group-aware split (deterministic across machines).

    The same idea as scikit-learn's ``StratifiedGroupKFold``, made exact for fractions and for rare
    classes. Groups are shuffled with ``numpy.random.default_rng(seed)``. First, for each class with at
    least 3 groups (rarest class first), a split that has none of its images yet gets the next free
    group holding that class, so test, val and train all see it. Then each remaining group, by its
    *primary class* (its rarest label overall) and largest first, goes to the split furthest below
    its target image count for that class.

    Args:
        labels: label index of every image.
        groups: group of every image; images of one group always share a split.
        val: fraction of images for validation, in [0, 1).
        test: fraction of images for test, in [0, 1); ``val + test < 1``.
        seed: random seed.

    Returns:
        Array of split names (``train``/``val``/``test``), one per image.

    Raises:
        ValueError: bad fractions or lengths.
    """
    if len(labels) != len(groups):
        raise ValueError(f"assign_splits: {len(labels)} labels but {len(groups)} groups")
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"split fractions val={val}, test={test} must be in [0, 1) with val + test < 1")
    fractions = {"test": test, "val": val, "train": 1.0 - val - test}
    active = [name for name in ("test", "val", "train") if fractions[name] > 0]
    class_totals = Counter(int(label) for label in labels)
    members: dict[str, Counter] = defaultdict(Counter)
    for label, group in zip(labels, groups):
        members[str(group)][int(label)] += 1
    group_names = sorted(members)
    rng = np.random.default_rng(seed)
    shuffled = [group_names[i] for i in rng.permutation(len(group_names))]
    rarest_first = sorted(class_totals, key=lambda label: (class_totals[label], label))
    current = {label: dict.fromkeys(active, 0) for label in class_totals}
    assignment: dict[str, str] = {}

    def assign(group: str, split: str) -> None:
        assignment[group] = split
        for label, count in members[group].items():
            current[label][split] += count

    # 1. every class with >= 3 groups gets one group in each split (rarest class first)
    for label in rarest_first:
        candidates = [group for group in shuffled if label in members[group]]
        if len(candidates) < 3:
            continue
        present = {assignment[group] for group in candidates if group in assignment}
        free = (group for group in candidates if group not in assignment)
        for split in active:
            if split not in present:
                group = next(free, None)
                if group is None:
                    break
                assign(group, split)
    # 2. the rest by primary (rarest) class, largest groups first (ties keep the shuffled order),
    #    each to the split furthest below its target count for that class
    by_class: dict[int, list[str]] = defaultdict(list)
    for group in shuffled:
        if group not in assignment:
            by_class[min(members[group], key=lambda label: (class_totals[label], label))].append(group)
    for label in rarest_first:
        for group in sorted(by_class[label], key=lambda name: -sum(members[name].values())):
            deficits = {split: fractions[split] * class_totals[label] - current[label][split] for split in active}
            assign(group, max(reversed(active), key=lambda name: deficits[name]))  # ties -> train, then val
    return np.array([assignment[str(group)] for group in groups], dtype=object)


FOLD_SEED_TRIES = 100
"""Seeds :func:`assign_folds` tries (``seed``, ``seed + 1``, ...) before it gives up."""


def assign_folds(
    labels: Sequence[int], groups: Sequence[str], folds: int, seed: int = 0
) -> tuple[np.ndarray, int]:
    """Grouped, stratified K-fold assignment: every group in one fold, every class in every fold.

    scikit-learn's ``StratifiedGroupKFold(shuffle=True)`` does the assignment. Its greedy search does not
    promise that a class with few groups reaches every fold, so the assignment is checked and, when a
    fold misses a class, drawn again with the next seed (``seed + 1``, ... up to
    :data:`FOLD_SEED_TRIES` tries); the seed that gave the assignment is returned so it can be recorded.

    Args:
        labels: label index of every image (the train+val rows).
        groups: group of every image (patient, lesion, duplicate set).
        folds: number of folds ``K`` (at least 2).
        seed: the first seed tried.

    Returns:
        ``(fold, seed_used)``: the held-out fold (0..K-1) of every image and the seed that drew it.

    Raises:
        ValueError: ``folds < 2``, a class with fewer than ``folds`` groups, or no valid assignment
            (the message names the setting ``cv.folds`` and the class).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.asarray(labels, dtype=np.int64)
    groups = np.asarray([str(g) for g in groups], dtype=object)
    if len(labels) != len(groups):
        raise ValueError(f"assign_folds: {len(labels)} labels but {len(groups)} groups")
    if folds < 2:
        raise ValueError(f"config key 'cv.folds': {folds} folds; cross-validation needs at least 2")
    for label in np.unique(labels):
        n_groups = len(set(groups[labels == label]))
        if n_groups < folds:
            raise ValueError(
                f"config key 'cv.folds': {folds} folds need at least {folds} groups of every class in train+val, "
                f"but class {int(label)} has {n_groups}; use cv.folds <= {n_groups}"
            )
    classes = set(labels.tolist())
    for attempt in range(FOLD_SEED_TRIES):
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed + attempt)
        fold = np.full(len(labels), -1, dtype=np.int64)
        for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
            fold[held_out] = k
        if all(set(labels[fold == k].tolist()) == classes for k in range(folds)):
            return fold, seed + attempt
    raise ValueError(
        f"config key 'cv.folds': no assignment of {folds} folds holds every class in every fold "
        f"({FOLD_SEED_TRIES} seeds from {seed} tried); use fewer folds"
    )


def count_table(frame: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Images per class (rows, + ``total``) and split (columns ``train, val, test, total``)."""
    table = pd.crosstab(frame["label_name"], frame["split"]).reindex(
        index=list(class_names), columns=list(SPLITS), fill_value=0
    )
    table = table.fillna(0).astype(int)
    table["total"] = table.sum(axis=1)
    table.loc["total"] = table.sum(axis=0)
    table.index.name = "class"
    table.columns.name = None
    return table
