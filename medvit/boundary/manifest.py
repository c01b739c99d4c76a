"""The one manifest check: behind ``medvit prepare --check``, and run by ``train``, ``evaluate``,
``pretrain`` and ``explain --scores`` before the first image is read.

A manifest is refused when a row would give a wrong result or fail late: a label outside the class
list (or a ``label_name`` that disagrees with it), a split other than ``train``/``val``/``test``, the
same image listed twice, a group (or byte-identical content) in two splits, a path that leaves the
data folder, a file that does not exist, or, for a run, class names that differ from the run's.
Every problem names the rows (CSV line numbers) and what to do.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from medvit.boundary.paths import leaves_root
from medvit.data.datasets import get_spec
from medvit.data.images import split_mask_paths
from medvit.data.manifest import digest_files, manifest_info_path, raw_hash, read_manifest, read_manifest_info
from medvit.data.splits import SPLITS
from medvit.errors import UserError

__all__ = [
    "ManifestCheck",
    "ManifestError",
    "check_manifest",
    "class_mismatch",
    "manifest_class_names",
    "require_same_classes",
    "require_valid_manifest",
]

_logger = logging.getLogger(__name__)


class ManifestError(UserError, ValueError):
    """A manifest that cannot be used; the message lists every problem, each naming its rows."""


@dataclass
class ManifestCheck:
    """Result of :func:`check_manifest`: ``ok`` when ``problems`` is empty."""

    manifest: Path
    root: Path
    num_images: int
    problems: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    raw_hash_matches: bool | None = None
    class_names: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _limited(items: Iterable[str], limit: int = 5) -> str:
    items = list(items)
    return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _rows(frame: pd.DataFrame, mask: pd.Series | Sequence[bool], column: str = "image") -> str:
    """``rows 3 (a.png), 7 (b.png)``: CSV line numbers (the header is line 1) and a column's values."""
    selected = frame[list(mask) if not isinstance(mask, pd.Series) else mask]
    return "row(s) " + _limited(f"{index + 2} ({value})" for index, value in zip(selected.index, selected[column]))


def manifest_class_names(
    manifest: str | Path, frame: pd.DataFrame | None = None, info: Mapping[str, Any] | None = None
) -> list[str]:
    """Class names in label order: the side JSON's (``info``, read when not given), else the
    (label, label_name) pairs of the rows."""
    manifest = Path(manifest)
    if info is None and manifest_info_path(manifest).is_file():
        info = read_manifest_info(manifest)
    if info and info.get("class_names"):
        return [str(c) for c in info["class_names"]]
    frame = read_manifest(manifest) if frame is None else frame
    pairs = frame[["label", "label_name"]].drop_duplicates().sort_values("label")
    return [str(n) for n in pairs["label_name"]]


def class_mismatch(names: Sequence[str], run_classes: Sequence[str]) -> str | None:
    """The problem when a manifest's classes differ from a run's (``None`` when they agree)."""
    names, run_classes = [str(c) for c in names], [str(c) for c in run_classes]
    if names == run_classes:
        return None
    return (
        f"classes {names} differ from the run's {run_classes}: its predictions would be scored under the "
        "wrong names; use data with the same classes in the same order (class folders named like the run's)"
    )


def require_same_classes(manifest: str | Path, run_classes: Sequence[str]) -> list[str]:
    """The manifest's class names, which must be the run's, in the same order.

    Raises:
        ManifestError: the classes (or their order, or their number) differ; both lists are named.
    """
    names = manifest_class_names(manifest)
    problem = class_mismatch(names, run_classes)
    if problem:
        raise ManifestError(f"{manifest}: {problem}")
    return names


def _row_problems(frame: pd.DataFrame, class_names: Sequence[str], root: Path, check_files: bool) -> list[str]:
    problems = []
    names = list(class_names)
    bad_label = ~frame["label"].between(0, len(names) - 1)
    if bad_label.any():
        problems.append(
            f"column 'label': {_rows(frame, bad_label, 'label')} outside 0..{len(names) - 1} "
            f"(classes {names}); fix the rows or re-create the manifest with 'medvit prepare'"
        )
    expected = [names[i] if 0 <= i < len(names) else None for i in frame["label"]]
    bad_name = (frame["label_name"] != expected) & ~bad_label
    if bad_name.any():
        problems.append(
            f"column 'label_name': {_rows(frame, bad_name, 'label_name')} disagree with their label "
            f"(classes {names}); fix the rows"
        )
    bad_split = ~frame["split"].isin(SPLITS)
    if bad_split.any():
        problems.append(
            f"column 'split': {_rows(frame, bad_split, 'split')} not one of {list(SPLITS)}; "
            "such rows would be left out silently: fix them"
        )
    duplicated = frame["image"].duplicated(keep=False)
    if duplicated.any():
        problems.append(f"column 'image': {_rows(frame, duplicated)} list the same image more than once; keep one row each")
    crossing = frame.groupby("group")["split"].nunique()
    crossing = sorted(crossing[crossing > 1].index)
    if crossing:
        problems.append(
            f"column 'group': {len(crossing)} group(s) in more than one split ({_limited(crossing)}): the same "
            "lesion, patient or image would be trained on and tested; re-create the split with 'medvit prepare'"
        )
    masks = frame["mask"] if "mask" in frame.columns else pd.Series([""] * len(frame), index=frame.index)
    escaping = [leaves_root(rel) for rel in frame["image"]]
    if any(escaping):
        problems.append(f"column 'image': {_rows(frame, escaping)} leave the data folder {root}; paths must stay inside it")
    mask_escaping = [any(leaves_root(m) for m in split_mask_paths(cell)) for cell in masks]
    if any(mask_escaping):
        problems.append(
            f"column 'mask': {_rows(frame, mask_escaping, 'mask')} leave the data folder {root}; paths must stay inside it"
        )
    if check_files:
        missing = [
            rel
            for rel, out in zip(frame["image"], escaping)
            if not out and not (root / rel).is_file()
        ]
        missing += [
            m for cell, out in zip(masks, mask_escaping) if not out for m in split_mask_paths(cell) if not (root / m).is_file()
        ]
        if missing:
            problems.append(
                f"{len(missing)} file(s) missing under {root}: {_limited(missing)}; restore them, pass the right "
                "root, or re-create the manifest with 'medvit prepare'"
            )
    return problems


def _same_content_across_splits(frame: pd.DataFrame, digests: dict[str, str]) -> str | None:
    split_of = dict(zip(frame["image"], frame["split"]))
    by_digest: dict[str, list[str]] = defaultdict(list)
    for rel, digest in digests.items():
        if rel in split_of:
            by_digest[digest].append(rel)
    leaks = [
        " = ".join(f"{rel} ({split_of[rel]})" for rel in sorted(paths))
        for paths in by_digest.values()
        if len({split_of[rel] for rel in paths}) > 1
    ]
    if not leaks:
        return None
    return (
        f"{len(leaks)} byte-identical image(s) in more than one split ({_limited(sorted(leaks), 3)}); "
        "re-create the manifest with 'medvit prepare' (it groups identical files)"
    )


def check_manifest(
    manifest: str | Path,
    root: str | Path | None = None,
    verify_hash: bool = True,
    num_workers: int | None = None,
    class_names: Sequence[str] | None = None,
    check_files: bool = True,
) -> ManifestCheck:
    """Validate a manifest (see the module docstring); ``medvit prepare --check`` prints the result.

    Args:
        manifest: the manifest CSV.
        root: the raw folder (default: the ``raw_dir`` recorded when it was prepared).
        verify_hash: re-hash the dataset files and compare with the recorded ones (added, removed,
            modified files are listed, and byte-identical images in two splits are found).
        num_workers: threads for hashing.
        class_names: the classes a run was trained on: the manifest's must be the same, in order.
        check_files: check that every image and mask exists.

    Raises:
        FileNotFoundError: manifest or root missing.
        ValueError: the CSV lacks a column or a label is not an integer (the row is named).
    """
    manifest = Path(manifest)
    frame = read_manifest(manifest)
    info = read_manifest_info(manifest) if manifest_info_path(manifest).is_file() else {}
    if root is None:
        if not info.get("raw_dir"):
            raise FileNotFoundError(f"{manifest}: no raw folder recorded (no side JSON); pass the data folder with --root")
        root = info["raw_dir"]
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: raw folder not found; pass the dataset folder with --root")
    names = manifest_class_names(manifest, frame, info)
    result = ManifestCheck(manifest, root, len(frame), class_names=names)
    mismatch = class_mismatch(names, class_names) if class_names is not None else None
    if mismatch:
        result.problems.append(mismatch)
    result.problems += _row_problems(frame, names, root, check_files)
    if verify_hash and info:
        spec = get_spec(info["dataset"])
        digests = digest_files(root, spec.scan(root).files, num_workers)
        recorded: dict[str, str] = info.get("files", {})
        result.added = sorted(set(digests) - set(recorded))
        result.removed = sorted(set(recorded) - set(digests))
        result.modified = sorted(
            rel for rel in set(digests) & set(recorded) if digests[rel][: len(recorded[rel])] != recorded[rel]
        )
        result.raw_hash_matches = raw_hash(digests) == info.get("raw_hash")
        if not result.raw_hash_matches:
            result.problems.append(
                f"raw content changed since prepare: {len(result.added)} added ({_limited(result.added)}), "
                f"{len(result.removed)} removed ({_limited(result.removed)}), "
                f"{len(result.modified)} modified ({_limited(result.modified)}); re-run 'medvit prepare' "
                "or restore the files"
            )
        leak = _same_content_across_splits(frame, digests)
        if leak:
            result.problems.append(leak)
    for problem in result.problems:
        _logger.warning("%s: %s", manifest, problem)
    return result


def require_valid_manifest(
    manifest: str | Path, root: str | Path | None = None, class_names: Sequence[str] | None = None
) -> ManifestCheck:
    """:func:`check_manifest` without re-hashing, raising when anything is wrong (before any work).

    Raises:
        ManifestError: one line per problem, each naming the rows and what to do.
        FileNotFoundError: manifest or root missing.
    """
    result = check_manifest(manifest, root, verify_hash=False, class_names=class_names)
    if not result.ok:
        raise ManifestError(f"{result.manifest}: " + "; ".join(result.problems))
    return result
