"""Dataset specs and readers of the datasets' original download layouts.

A reader turns a raw download folder into :class:`RawItem` records (image path, label, group,
masks) and :class:`Rejection` records (what cannot be used, and why), without decoding anything;
:func:`medvit.data.manifest.prepare_manifest` validates the images and splits. Paths are POSIX
strings relative to the raw folder.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

from medvit.data.dicom import DICOM_EXTENSIONS
from medvit.errors import UnknownNameError, UserError

__all__ = [
    "ClinicalQuestion",
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "DatasetSpec",
    "LayoutError",
    "RawItem",
    "RawScan",
    "Rejection",
    "get_spec",
    "list_datasets",
]

_logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}) | DICOM_EXTENSIONS
"""File name suffixes (lower case) taken for images when scanning a folder (DICOM: ``.dcm``, ``.dicom``)."""


class LayoutError(UserError, FileNotFoundError):
    """A raw folder does not have the layout its dataset expects; the message says what was expected."""


@dataclass(frozen=True)
class RawItem:
    """One usable-looking image found in a raw folder (not yet decoded).

    Attributes:
        image: path relative to the raw folder (POSIX).
        label_name: class name as in the spec's ``class_names``.
        group: the unit that must not cross splits (lesion, patient, image).
        masks: relative paths of this image's mask files, merged by union when loaded.
        attributes: ``(column, value)`` pairs for the manifest's reporting-only columns (subgroups
            such as sex or eye); never a model input.
    """

    image: str
    label_name: str
    group: str
    masks: tuple[str, ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Rejection:
    """A file or label row that is not used, with a short reason and details."""

    path: str
    reason: str
    detail: str = ""


@dataclass
class RawScan:
    """What a reader found: items, rejections, the class order and every dataset file it looked at."""

    items: list[RawItem]
    rejected: list[Rejection]
    class_names: tuple[str, ...]
    files: list[str]


@dataclass(frozen=True)
class ClinicalQuestion:
    """The binary question clinicians ask of a dataset: is the image one of ``positive_classes``?

    Attributes:
        name: what a "yes" is called in reports and on the page (``malignant``, ``melanoma``).
        positive_classes: the class names whose summed probability is the question's score.
    """

    name: str
    positive_classes: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "positive_classes": list(self.positive_classes)}


@dataclass(frozen=True)
class DatasetSpec:
    """How one dataset is laid out, labelled and grouped.

    Attributes:
        name: the ``medvit prepare`` DATASET argument.
        class_names: class order (label ``i`` is ``class_names[i]``); empty for ``folder``, whose
            classes are the sub-folder names found at prepare time.
        preset: transform preset (``dermoscopy``, ``fundus``, ``ultrasound``, ``generic``).
        is_ordinal: labels are ordered grades (EyePACS), so QWK is meaningful.
        has_mask: images come with lesion masks (BUSI).
        group_key: what a group is, in words.
        layout: the expected raw layout, in words (used in error messages and docs/data.md).
        questions: the clinical questions reported as operating points (the first is the page's).
        subgroup_columns: reporting-only manifest columns the reader fills (:attr:`RawItem.attributes`).
        reader: ``reader(raw_dir) -> RawScan``.
    """

    name: str
    class_names: tuple[str, ...]
    preset: str
    is_ordinal: bool = False
    has_mask: bool = False
    group_key: str = "image"
    layout: str = ""
    questions: tuple[ClinicalQuestion, ...] = ()
    subgroup_columns: tuple[str, ...] = ()
    reader: Callable[[Path], RawScan] | None = field(default=None, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def scan(self, raw_dir: str | Path) -> RawScan:
        """Read ``raw_dir`` in this dataset's layout.

        Raises:
            LayoutError: ``raw_dir`` is missing or not in the expected layout.
        """
        raw_dir = Path(raw_dir)
        if not raw_dir.is_dir():
            raise LayoutError(f"{raw_dir}: no such folder; expected {self.name} raw data: {self.layout}")
        assert self.reader is not None, f"spec {self.name} has no reader"
        return self.reader(raw_dir)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursive, hidden files skipped), sorted."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def _read_label_table(path: Path, columns: Iterable[str], layout_hint: str) -> pd.DataFrame:
    sep = "\t" if path.suffix.lower() in (".tab", ".tsv") else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise LayoutError(f"{path}: not a readable label CSV ({error}); expected {layout_hint}") from error
    table.columns = [column.strip() for column in table.columns]
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise LayoutError(
            f"{path}: missing column(s) {missing} (found {list(table.columns)}); expected {layout_hint}"
        )
    return table


def _find_label_file(raw_dir: Path, names: Iterable[str], layout: str) -> Path:
    for name in names:
        for candidate in sorted(raw_dir.glob(name)):
            if candidate.is_file():
                return candidate
    raise LayoutError(f"{raw_dir}: no label file ({', '.join(names)}) found; expected {layout}")


def _index_images_by_stem(
    paths: Iterable[Path], root: Path, rejected: list[Rejection]
) -> dict[str, str]:
    """Map file stem -> relative path; a second file with the same stem is rejected (first sorted wins)."""
    index: dict[str, str] = {}
    for path in paths:
        rel = _rel(path, root)
        if path.stem in index:
            rejected.append(
                Rejection(rel, "second copy of an image id", f"{path.stem} already taken from {index[path.stem]}")
            )
            continue
        index[path.stem] = rel
    return index


def _match_label_rows(
    rows: Iterable[tuple[str, str, str]],
    index: dict[str, str],
    rejected: list[Rejection],
    *,
    table_rel: str,
    row_kind: str,
    label_field: str,
    classes: tuple[str, ...],
    expected: str,
    missing: Callable[[str], str],
) -> list[RawItem]:
    """Join the rows of a label table with the images found, rejecting (with the reason) what cannot be used.

    Args:
        rows: ``(image stem, label, group[, attributes])`` per table row, in file order (row 1 is
            the header); ``attributes`` as in :attr:`RawItem.attributes`.
        index: image stem -> path relative to the raw folder (:func:`_index_images_by_stem`).
        rejected: list the rejections are appended to.
        table_rel: the table's path relative to the raw folder, for the messages.
        row_kind: what a row is called in the reasons (``"metadata row"``, ``"label row"``).
        label_field: the label column's name, for the messages.
        classes: the accepted labels.
        expected: how the messages list the accepted labels.
        missing: the detail for a row whose image is not there, from the stem.

    Returns:
        One item per usable row; images that no row names are rejected too.
    """
    items: list[RawItem] = []
    seen: set[str] = set()
    for row_number, (stem, label, group, *attributes) in enumerate(rows, start=2):
        where = f"{table_rel}:{row_number} ({stem})"
        if stem in seen:
            rejected.append(Rejection(where, f"duplicate {row_kind}", f"{stem} listed again"))
            continue
        seen.add(stem)
        if stem not in index:
            rejected.append(Rejection(where, f"{row_kind} without image", missing(stem)))
            continue
        if label not in classes:
            detail = f"{label_field}={label!r}; expected one of {expected}"
            rejected.append(Rejection(index[stem], "unknown label", detail))
            continue
        items.append(RawItem(index[stem], label, group, attributes=attributes[0] if attributes else ()))
    for stem, rel in index.items():
        if stem not in seen:
            rejected.append(Rejection(rel, f"image without {row_kind}", f"{stem} not in {table_rel}"))
    return items


# ---------------------------------------------------------------------------------------------- HAM10000
HAM10000_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
_HAM_SUBGROUPS = ("sex", "age", "localization", "dataset")
_HAM_LAYOUT = (
    "HAM10000_metadata.csv (columns lesion_id,image_id,dx,...) and the images ISIC_*.jpg in "
    "HAM10000_images_part_1/ and HAM10000_images_part_2/ (or one folder, e.g. HAM10000_images/)"
)


def read_ham10000(raw_dir: Path) -> RawScan:
    """Read HAM10000: metadata CSV + images anywhere below ``raw_dir``; group = ``lesion_id``.

    Only ``lesion_id``, ``image_id`` and ``dx`` label the data. ``sex``, ``age``, ``localization`` and
    ``dataset`` (the image source), where present, are carried as reporting-only subgroup columns,
    never a model input; ``dx_type`` leaks the label and is never read.
    """
    meta_path = _find_label_file(
        raw_dir, ("HAM10000_metadata.csv", "HAM10000_metadata.tab", "HAM10000_metadata*"), _HAM_LAYOUT
    )
    table = _read_label_table(meta_path, ("lesion_id", "image_id", "dx"), _HAM_LAYOUT)
    rejected: list[Rejection] = []
    images = _image_files(raw_dir)
    index = _index_images_by_stem((p for p in images if p.stem.upper().startswith("ISIC_")), raw_dir, rejected)
    meta_rel = _rel(meta_path, raw_dir)
    present = [column for column in _HAM_SUBGROUPS if column in table.columns]
    rows = (
        (
            row["image_id"].strip(),
            row["dx"].strip(),
            row["lesion_id"].strip() or row["image_id"].strip(),
            tuple((column, row[column].strip()) for column in present),
        )
        for row in table.to_dict("records")
    )
    items = _match_label_rows(
        rows, index, rejected, table_rel=meta_rel, row_kind="metadata row", label_field="dx",
        classes=HAM10000_CLASSES, expected=str(HAM10000_CLASSES),
        missing=lambda image_id: f"no {image_id}.jpg below {raw_dir}",
    )
    return RawScan(items, rejected, HAM10000_CLASSES, sorted([meta_rel, *index.values()]))


# ----------------------------------------------------------------------------------------------- EyePACS
EYEPACS_CLASSES = ("0", "1", "2", "3", "4")
_EYEPACS_LAYOUT = "trainLabels.csv (columns image,level with level 0-4) and train/<patient>_<left|right>.jpeg"
_EYE_PATTERN = re.compile(r"^(?P<patient>.+)_(?P<eye>left|right)$")


def read_eyepacs(raw_dir: Path) -> RawScan:
    """Read EyePACS (Kaggle DR 2015): ``trainLabels.csv`` + ``train/*.jpeg``; group = patient number."""
    labels_path = _find_label_file(raw_dir, ("trainLabels.csv", "trainLabels*.csv"), _EYEPACS_LAYOUT)
    table = _read_label_table(labels_path, ("image", "level"), _EYEPACS_LAYOUT)
    image_dir = raw_dir / "train" if (raw_dir / "train").is_dir() else raw_dir
    rejected: list[Rejection] = []
    index = _index_images_by_stem(_image_files(image_dir), raw_dir, rejected)
    labels_rel = _rel(labels_path, raw_dir)

    def patient(name: str) -> str:
        match = _EYE_PATTERN.match(name)
        return match["patient"] if match else name

    def eye(name: str) -> tuple[tuple[str, str], ...]:
        match = _EYE_PATTERN.match(name)
        return (("eye", match["eye"] if match else ""),)

    rows = (
        (row.image.strip(), row.level.strip(), patient(row.image.strip()), eye(row.image.strip()))
        for row in table.itertuples(index=False)
    )
    items = _match_label_rows(
        rows, index, rejected, table_rel=labels_rel, row_kind="label row", label_field="level",
        classes=EYEPACS_CLASSES, expected="0, 1, 2, 3, 4", missing=lambda name: f"no {name}.jpeg in {image_dir}",
    )
    return RawScan(items, rejected, EYEPACS_CLASSES, sorted([labels_rel, *index.values()]))


# -------------------------------------------------------------------------------------------------- BUSI
BUSI_CLASSES = ("benign", "malignant", "normal")
_BUSI_LAYOUT = (
    "Dataset_BUSI_with_GT/{benign,malignant,normal}/ with images '<class> (i).png' and masks "
    "'<class> (i)_mask.png' (+ '_mask_1.png', '_mask_2.png')"
)
_MASK_PATTERN = re.compile(r"^(?P<stem>.+?)_mask(?:_\d+)?$")


def read_busi(raw_dir: Path) -> RawScan:
    """Read BUSI: one folder per class, masks next to their image; group = the image.

    Every mask of an image (``_mask``, ``_mask_1``, ``_mask_2``) is listed in its item; they are merged
    by union at load time (:func:`medvit.data.images.read_mask`), so nothing is written under RAW.
    Byte-identical images are grouped or dropped later by ``prepare_manifest``.
    """
    base = raw_dir / "Dataset_BUSI_with_GT" if (raw_dir / "Dataset_BUSI_with_GT").is_dir() else raw_dir
    class_dirs = {name: base / name for name in BUSI_CLASSES if (base / name).is_dir()}
    if not class_dirs:
        raise LayoutError(f"{raw_dir}: no benign/, malignant/ or normal/ folder; expected {_BUSI_LAYOUT}")
    items: list[RawItem] = []
    rejected: list[Rejection] = []
    files: list[str] = []
    for child in sorted(base.iterdir()):
        if child.is_dir() and child.name not in BUSI_CLASSES and not child.name.startswith("."):
            for path in _image_files(child):
                rejected.append(
                    Rejection(
                        _rel(path, raw_dir), "unknown label", f"folder {child.name!r} is not one of {BUSI_CLASSES}"
                    )
                )
    for label_name, folder in class_dirs.items():
        images: dict[str, Path] = {}
        masks: dict[str, list[str]] = defaultdict(list)
        for path in _image_files(folder):
            files.append(_rel(path, raw_dir))
            match = _MASK_PATTERN.match(path.stem)
            if match:
                masks[match["stem"]].append(_rel(path, raw_dir))
            else:
                images[path.stem] = path
        for stem in sorted(set(masks) - set(images)):
            for mask in masks[stem]:
                rejected.append(Rejection(mask, "mask without image", f"no {stem}.png in {folder}"))
        for stem, path in sorted(images.items()):
            rel = _rel(path, raw_dir)
            group = f"{label_name}/{stem}" if not stem.startswith(label_name) else stem
            items.append(RawItem(rel, label_name, group, tuple(sorted(masks.get(stem, [])))))
    return RawScan(items, rejected, BUSI_CLASSES, sorted(files))


# ------------------------------------------------------------------------------------------------ folder
_FOLDER_LAYOUT = "one sub-folder per class (RAW/<class>/*.png|jpg|...), class order = sorted folder names"


def read_folder(raw_dir: Path) -> RawScan:
    """Read a generic classification folder: the label is the top-level sub-folder; group = the image."""
    items: list[RawItem] = []
    rejected: list[Rejection] = []
    files: list[str] = []
    class_dirs = [p for p in sorted(raw_dir.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    class_names = tuple(p.name for p in class_dirs if _image_files(p))
    if not class_names:
        raise LayoutError(f"{raw_dir}: no sub-folder with images; expected {_FOLDER_LAYOUT}")
    for folder in class_dirs:
        if folder.name not in class_names:
            continue
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
            rel = _rel(path, raw_dir)
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                detail = f"suffix {path.suffix!r} not in {sorted(IMAGE_EXTENSIONS)}"
                rejected.append(Rejection(rel, "not an image file", detail))
                continue
            files.append(rel)
            items.append(RawItem(rel, folder.name, str(Path(rel).with_suffix("").as_posix())))
    return RawScan(items, rejected, class_names, sorted(files))


DATASETS: dict[str, DatasetSpec] = {
    "ham10000": DatasetSpec(
        "ham10000",
        HAM10000_CLASSES,
        "dermoscopy",
        group_key="lesion_id",
        layout=_HAM_LAYOUT,
        questions=(
            ClinicalQuestion("melanoma", ("mel",)),
            ClinicalQuestion("malignant", ("mel", "bcc", "akiec")),
        ),
        subgroup_columns=_HAM_SUBGROUPS,
        reader=read_ham10000,
    ),
    "eyepacs": DatasetSpec(
        "eyepacs",
        EYEPACS_CLASSES,
        "fundus",
        is_ordinal=True,
        group_key="patient (number before _left/_right)",
        layout=_EYEPACS_LAYOUT,
        questions=(ClinicalQuestion("referable DR (grade 2 or higher)", ("2", "3", "4")),),
        subgroup_columns=("eye",),
        reader=read_eyepacs,
    ),
    "busi": DatasetSpec(
        "busi",
        BUSI_CLASSES,
        "ultrasound",
        has_mask=True,
        group_key="image (byte-identical images share a group)",
        layout=_BUSI_LAYOUT,
        questions=(ClinicalQuestion("malignant", ("malignant",)),),
        reader=read_busi,
    ),
    "folder": DatasetSpec("folder", (), "generic", group_key="image", layout=_FOLDER_LAYOUT, reader=read_folder),
}
"""Every dataset ``medvit prepare`` knows, by name."""


def list_datasets() -> list[str]:
    """Names accepted by :func:`get_spec` and ``medvit prepare``."""
    return list(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    """Return the :class:`DatasetSpec` called ``name``.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    try:
        return DATASETS[name.lower()]
    except KeyError:
        raise UnknownNameError(f"unknown dataset {name!r}; choose one of {list_datasets()}") from None
