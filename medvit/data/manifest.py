"""Manifests: validated, seeded, stratified, group-aware splits of a raw dataset folder.

The split assignment itself lives in :mod:`medvit.data.splits`; re-validating a manifest
(``medvit prepare --check``, and every command before it reads one) in :mod:`medvit.boundary.manifest`.

A manifest is a CSV with columns ``image, label, label_name, group, split`` (+ ``mask`` for datasets
with masks: ``;``-joined paths merged by union at load time), paths relative to the raw folder.
Next to ``NAME.csv`` sit ``NAME.json`` (dataset, class order, seed, fractions, raw content hash, a
sha256 prefix of every dataset file, counts, duplicates) and ``NAME.rejected.csv`` (``path, reason, detail``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import tempfile
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

from medvit.atomic import atomic_write_text
from medvit.data.datasets import IMAGE_EXTENSIONS, ClinicalQuestion, DatasetSpec, RawItem, Rejection, get_spec
from medvit.data.images import DEFAULT_MAX_PIXELS, MASK_SEPARATOR, ImageReadError, decoded_size, read_mask
from medvit.data.splits import SPLITS, assign_splits, count_table
from medvit.errors import RunError
from medvit.hashing import sha256_file

__all__ = [
    "SPLITS",
    "PrepareResult",
    "assign_splits",
    "count_table",
    "digest_files",
    "manifest_hash",
    "manifest_info_path",
    "prepare_manifest",
    "raw_hash",
    "read_manifest",
    "read_manifest_info",
    "rejected_path",
]

_logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("image", "label", "label_name", "group", "split")
_FILE_DIGEST_CHARS = 16  # per-file sha256 prefix kept in the side JSON (change detection); raw_hash uses all 64


# --------------------------------------------------------------------------------------------- paths/io
def manifest_info_path(manifest: str | Path) -> Path:
    """The side JSON of a manifest: ``NAME.csv`` -> ``NAME.json``."""
    return Path(manifest).with_suffix(".json")


def write_manifest_info(manifest: str | Path, info: Mapping[str, Any]) -> Path:
    """Write the side JSON of a manifest atomically (``medvit prepare`` and the folds of a cross-validated run)."""
    path = manifest_info_path(manifest)
    atomic_write_text(path, json.dumps(dict(info), indent=1) + "\n")
    return path


def split_counts(counts: pd.DataFrame) -> dict[str, dict[str, int]]:
    """``{class: {split: images, ..., "total": images}}`` of a :func:`~medvit.data.splits.count_table` (the side
    JSON's ``counts``)."""
    return {name: {split: int(counts.loc[name, split]) for split in (*SPLITS, "total")} for name in counts.index}


def rejected_path(manifest: str | Path) -> Path:
    """The rejected-files CSV of a manifest: ``NAME.csv`` -> ``NAME.rejected.csv``."""
    manifest = Path(manifest)
    return manifest.with_name(f"{manifest.stem}.rejected.csv")


def manifest_hash(manifest: str | Path) -> str:
    """sha256 (hex) of the manifest CSV's bytes, for run records (``model.json``)."""
    return sha256_file(Path(manifest))


def read_manifest(manifest: str | Path) -> pd.DataFrame:
    """Read a manifest CSV with the right dtypes (``label`` int, the rest str, ``mask`` '' when absent).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a required column is missing or a label is not an integer.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no such manifest; create it with 'medvit prepare'")
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    missing = [column for column in MANIFEST_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{manifest}: missing column(s) {missing}; create the manifest with 'medvit prepare'")
    labels = pd.to_numeric(frame["label"].str.strip(), errors="coerce")
    bad = labels.isna() | (labels != labels.round())
    if bad.any():
        rows = ", ".join(f"{index + 2} ({frame['label'][index]!r})" for index in frame.index[bad][:5])
        raise ValueError(f"{manifest}: column 'label' must hold integers; row(s) {rows} do not")
    frame["label"] = labels.astype(np.int64)
    return frame


def read_manifest_info(manifest: str | Path) -> dict:
    """Read the side JSON of a manifest (dataset, class_names, seed, raw_hash, counts, ...).

    Raises:
        FileNotFoundError: the JSON is missing (re-run ``medvit prepare``).
    """
    path = manifest_info_path(manifest)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest side JSON missing; re-create the manifest with 'medvit prepare'")
    return json.loads(path.read_text())


def _num_workers(num_workers: int | None) -> int:
    return max(1, num_workers if num_workers is not None else min(8, os.cpu_count() or 1))


def digest_files(root: Path, files: Sequence[str], num_workers: int | None = None) -> dict[str, str]:
    """sha256 of each file (streamed), keyed by its relative path, in sorted order."""
    ordered = sorted(files)
    with ThreadPoolExecutor(_num_workers(num_workers)) as pool:
        digests = list(pool.map(lambda rel: sha256_file(root / rel), ordered))
    return dict(zip(ordered, digests))


def raw_hash(digests: Mapping[str, str]) -> str:
    """Content hash of a raw folder: sha256 over sorted ``relative_path<TAB>sha256`` lines.

    File contents and names only (no sizes or mtimes, which differ across clones and copies).
    """
    digest = hashlib.sha256()
    for rel in sorted(digests):
        digest.update(f"{rel}\t{digests[rel]}\n".encode())
    return digest.hexdigest()


# -------------------------------------------------------------------------------------------- prepare
@dataclass
class PrepareResult:
    """What :func:`prepare_manifest` wrote and found."""

    manifest: Path
    info: Path
    rejected: Path
    counts: pd.DataFrame
    num_images: int
    num_groups: int
    num_rejected: int
    duplicate_sets: list[list[str]] = field(default_factory=list)
    raw_hash: str = ""
    rejected_by_reason: dict[str, int] = field(default_factory=dict)


def _validate_item(root: Path, item: RawItem, max_pixels: int | None) -> tuple[RawItem | None, list[Rejection]]:
    """Decode the image and its masks; drop unusable masks, reject an unusable image."""
    try:
        size = decoded_size(root / item.image, max_pixels=max_pixels)
    except (ImageReadError, FileNotFoundError) as error:
        return None, [Rejection(item.image, _reason(error), str(error))]
    kept, rejected = [], []
    for mask in item.masks:
        try:
            mask_size = read_mask(root / mask, max_pixels=max_pixels).shape[::-1]
        except (ImageReadError, FileNotFoundError) as error:
            rejected.append(Rejection(mask, _reason(error), str(error)))
            continue
        if mask_size != size:
            rejected.append(
                Rejection(mask, "mask size differs from image", f"mask {mask_size} vs image {size} ({item.image})")
            )
            continue
        kept.append(mask)
    return replace(item, masks=tuple(kept)), rejected


def _natural_key(text: str) -> list[tuple[int, int | str]]:
    """Sort key that orders numbers by value: ``labels.csv:9`` before ``labels.csv:10``."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part]


def _reason(error: Exception) -> str:
    if isinstance(error, FileNotFoundError):
        return "file missing"
    return getattr(error, "reason", "unreadable image")


def _resolve_duplicates(
    items: list[RawItem],
    digests: Mapping[str, str],
    duplicates: str,
    keep_conflicting: bool,
) -> tuple[list[RawItem], list[Rejection], list[list[str]]]:
    """Group (or drop) byte-identical images; drop identical images with different labels by default."""
    by_hash: dict[str, list[RawItem]] = defaultdict(list)
    for item in sorted(items, key=lambda item: item.image):
        by_hash[digests[item.image]].append(item)
    parent: dict[str, str] = {item.group: item.group for item in items}

    def find(group: str) -> str:
        while parent[group] != group:
            parent[group] = parent[parent[group]]
            group = parent[group]
        return group

    dropped: set[str] = set()
    rejected: list[Rejection] = []
    duplicate_sets: list[list[str]] = []
    for sha, copies in sorted(by_hash.items(), key=lambda kv: kv[1][0].image):
        if len(copies) < 2:
            continue
        names = [copy.image for copy in copies]
        duplicate_sets.append(names)
        labels = sorted({copy.label_name for copy in copies})
        if len(labels) > 1 and not keep_conflicting:
            _logger.warning("byte-identical images with different labels %s dropped: %s", labels, names)
            for copy in copies:
                others = [name for name in names if name != copy.image]
                rejected.append(
                    Rejection(copy.image, "duplicate with conflicting label", f"identical to {others}, labels {labels}")
                )
                dropped.add(copy.image)
            continue
        if duplicates == "drop" and len(labels) == 1:
            _logger.warning("byte-identical images: keeping %s, dropping %s", names[0], names[1:])
            for copy in copies[1:]:
                detail = f"identical to {names[0]} (sha256 {sha[:12]})"
                rejected.append(Rejection(copy.image, "duplicate dropped", detail))
                dropped.add(copy.image)
            continue
        _logger.warning("byte-identical images grouped together (one split): %s", names)
        roots = sorted(find(copy.group) for copy in copies)
        for other in roots[1:]:
            parent[find(other)] = roots[0]
    kept = [
        replace(item, group=find(item.group))
        for item in items
        if item.image not in dropped
    ]
    return kept, rejected, duplicate_sets


def _questions(spec: DatasetSpec, class_names: Sequence[str], positive_classes: Sequence[str] | None) -> list[ClinicalQuestion]:
    """The dataset's clinical questions, or the one ``positive_classes`` asks (checked against the classes)."""
    if not positive_classes:
        return list(spec.questions)
    unknown = [c for c in positive_classes if c not in class_names]
    if unknown:
        raise ValueError(f"--positive {unknown}: not among the classes found, {list(class_names)}")
    if len(set(positive_classes)) == len(class_names):
        raise ValueError(f"--positive names every class {list(class_names)}; leave at least one negative class")
    return [ClinicalQuestion(" or ".join(positive_classes), tuple(positive_classes))]


def _log_rejections(rejected: Sequence[Rejection]) -> None:
    by_reason: dict[str, list[str]] = defaultdict(list)
    for rejection in rejected:
        by_reason[rejection.reason].append(rejection.path)
    for reason, paths in sorted(by_reason.items()):
        examples = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
        _logger.warning("rejected %d x %s (e.g. %s)", len(paths), reason, examples)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, lineterminator="\n")


def _require_writable_folder(out: Path) -> None:
    """Fail before any decoding when the manifest's folder cannot be created or written.

    Raises:
        OSError: the folder cannot be created, or a file cannot be written in it (message names it).
    """
    folder = out.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        reason = "a file, not a folder" if isinstance(error, FileExistsError) else error.strerror or str(error)
        raise OSError(f"cannot write the manifest into {folder} ({reason}); choose a writable --out folder") from error


def _broken_links(raw_dir: Path) -> list[Rejection]:
    """Symlinks named like images that lead to no file (dangling, or a loop); hidden paths skipped."""
    rejected = []
    for folder, dirs, files in os.walk(raw_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            if name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_symlink():
                continue
            try:
                path.resolve(strict=True)
                continue  # leads to something that exists (a folder named like an image)
            except (RuntimeError, OSError) as error:  # Python < 3.13 reports a loop as RuntimeError
                loop = isinstance(error, RuntimeError) or error.errno == errno.ELOOP
            target = os.readlink(path)
            rel = path.relative_to(raw_dir).as_posix()
            if loop:
                rejected.append(Rejection(rel, "symlink loop", f"link to {target}, which leads back to itself"))
            else:
                rejected.append(Rejection(rel, "dangling symlink", f"link to {target}, which does not exist"))
    return rejected


def prepare_manifest(
    dataset: str | DatasetSpec,
    raw_dir: str | Path,
    out: str | Path,
    seed: int = 0,
    val: float = 0.15,
    test: float = 0.15,
    duplicates: Literal["group", "drop"] = "group",
    keep_conflicting: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    num_workers: int | None = None,
    positive_classes: Sequence[str] | None = None,
) -> PrepareResult:
    """Validate a raw dataset folder and write its manifest, side JSON and rejected list.

    Every image (and mask) is decoded; files that cannot be used go to ``NAME.rejected.csv`` with the
    reason. Byte-identical images are grouped into one group (``duplicates="group"``) or reduced to
    one copy (``"drop"``); identical images with different labels are dropped unless
    ``keep_conflicting``. The split is :func:`assign_splits`.

    Args:
        dataset: a name from :data:`medvit.data.DATASETS` or a spec.
        raw_dir: the downloaded dataset folder (manifest paths are relative to it).
        out: manifest CSV path (``NAME.csv``); ``NAME.json`` and ``NAME.rejected.csv`` go next to it.
        seed: split seed.
        val: validation fraction of images.
        test: test fraction of images.
        duplicates: ``"group"`` or ``"drop"`` for byte-identical images with the same label.
        keep_conflicting: keep (and group) identical images with different labels instead of dropping.
        max_pixels: decompression-bomb guard for every image.
        num_workers: threads for hashing and decoding (default: min(8, CPUs)).
        positive_classes: the classes of the clinical question reported as operating points
            (``folder`` datasets; replaces a named dataset's own questions).

    Raises:
        KeyError: unknown dataset.
        LayoutError: ``raw_dir`` is not in the dataset's layout (says what was expected).
        ValueError: bad fractions or ``duplicates`` value.
        RuntimeError: nothing usable remains.
        OSError: the folder of ``out`` cannot be written (checked before any image is decoded).
    """
    spec = dataset if isinstance(dataset, DatasetSpec) else get_spec(dataset)
    if duplicates not in ("group", "drop"):
        raise ValueError(f"duplicates={duplicates!r}; choose 'group' or 'drop'")
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"split fractions val={val}, test={test} must be in [0, 1) with val + test < 1")
    raw_dir, out = Path(raw_dir), Path(out)
    scan = spec.scan(raw_dir)
    _require_writable_folder(out)
    _logger.info(
        "%s: %d candidate images in %s, hashing %d files", spec.name, len(scan.items), raw_dir, len(scan.files)
    )
    digests = digest_files(raw_dir, scan.files, num_workers)
    rejected = list(scan.rejected) + _broken_links(raw_dir)
    with ThreadPoolExecutor(_num_workers(num_workers)) as pool:
        results = list(pool.map(lambda item: _validate_item(raw_dir, item, max_pixels), scan.items))
    items = []
    for item, item_rejections in results:
        rejected.extend(item_rejections)
        if item is not None:
            items.append(item)
    items, duplicate_rejections, duplicate_sets = _resolve_duplicates(items, digests, duplicates, keep_conflicting)
    rejected.extend(duplicate_rejections)
    rejected = sorted(rejected, key=lambda r: (_natural_key(r.path), r.reason))
    rejected_frame = pd.DataFrame([(r.path, r.reason, r.detail) for r in rejected], columns=["path", "reason", "detail"])
    _write_csv(rejected_frame, rejected_path(out))
    _log_rejections(rejected)
    if not items:
        raise RunError(
            f"{raw_dir}: no usable {spec.name} image ({len(rejected)} rejected, see {rejected_path(out)}); "
            f"expected {spec.layout}"
        )
    items.sort(key=lambda item: item.image)
    class_names = list(scan.class_names)
    label_of = {name: index for index, name in enumerate(class_names)}
    labels = [label_of[item.label_name] for item in items]
    groups = [item.group for item in items]
    splits = assign_splits(labels, groups, val=val, test=test, seed=seed)
    frame = pd.DataFrame(
        {
            "image": [item.image for item in items],
            "label": labels,
            "label_name": [item.label_name for item in items],
            "group": groups,
            "split": splits,
        }
    )
    if spec.has_mask:
        frame["mask"] = [MASK_SEPARATOR.join(item.masks) for item in items]
    subgroup_columns = [c for c in spec.subgroup_columns if any(c == k for item in items for k, _ in item.attributes)]
    for column in subgroup_columns:  # reporting only (subgroup tables); never a model input
        frame[column] = [dict(item.attributes).get(column, "") for item in items]
    questions = _questions(spec, class_names, positive_classes)
    _write_csv(frame, out)
    counts = count_table(frame, class_names)
    content_hash = raw_hash(digests)
    info = {
        "dataset": spec.name,
        "class_names": class_names,
        "preset": spec.preset,
        "is_ordinal": spec.is_ordinal,
        "has_mask": spec.has_mask,
        "group_key": spec.group_key,
        "questions": [q.to_dict() for q in questions],
        "subgroup_columns": subgroup_columns,
        "seed": seed,
        "val": val,
        "test": test,
        "duplicates": duplicates,
        "keep_conflicting": keep_conflicting,
        "raw_dir": str(raw_dir),  # as given: an absolute path of this machine would not travel
        "raw_hash": content_hash,
        "num_images": len(frame),
        "num_groups": int(frame["group"].nunique()),
        "num_rejected": len(rejected),
        "rejected_by_reason": dict(sorted(Counter(r.reason for r in rejected).items())),
        "counts": split_counts(counts),
        "duplicate_sets": duplicate_sets,
        "files": {rel: sha[:_FILE_DIGEST_CHARS] for rel, sha in digests.items()},
    }
    write_manifest_info(out, info)
    _logger.info("wrote %s (%d images, %d groups, %d rejected)", out, len(frame), info["num_groups"], len(rejected))
    return PrepareResult(
        manifest=out,
        info=manifest_info_path(out),
        rejected=rejected_path(out),
        counts=counts,
        num_images=len(frame),
        num_groups=info["num_groups"],
        num_rejected=len(rejected),
        duplicate_sets=duplicate_sets,
        raw_hash=content_hash,
        rejected_by_reason=info["rejected_by_reason"],
    )
