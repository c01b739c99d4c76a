"""What the page reads as input: an uploaded image file, or a bundled sample (``medvit/assets/samples/``).

:func:`read_upload` validates an upload (size, decodability, pixel count) and decodes it;
:func:`load_samples` reads the sample catalogue ``samples.csv``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medvit.data.datasets import IMAGE_EXTENSIONS
from medvit.data.images import DEFAULT_MAX_PIXELS, ImageReadError, read_image
from medvit.assets import samples_dir as bundled_samples_dir

__all__ = [
    "MAX_UPLOAD_BYTES",
    "MAX_IMAGE_PIXELS",
    "TRANSFER_LIMIT_BYTES",
    "UPLOAD_FORMATS",
    "UPLOAD_TYPES",
    "Sample",
    "load_samples",
    "read_upload",
]

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
"""Largest accepted upload (20 MiB)."""

MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS
"""Largest accepted image, width x height (50 MP); checked from the header before decoding."""

TRANSFER_LIMIT_BYTES = 200 * 1024 * 1024
"""What the uploader widget and the server take (Streamlit's default, 200 MiB): above
:data:`MAX_UPLOAD_BYTES`, so that a file over the upload limit reaches :func:`read_upload` and the page
says why it is refused (the widget alone only marks it red)."""

UPLOAD_TYPES = tuple(sorted(suffix.lstrip(".") for suffix in IMAGE_EXTENSIONS))
"""File extensions the page's uploader accepts: the ones ``medvit prepare`` takes as images."""

UPLOAD_FORMATS = "PNG, JPEG, BMP, TIFF, GIF or WebP"
"""The accepted formats, as the page and its messages name them."""


@dataclass(frozen=True)
class Sample:
    """A bundled sample image.

    Attributes:
        path: the image file.
        dataset: dataset name (``busi``, ``ham10000``, ``eyepacs``).
        label: the true class name.
        mask: the lesion mask file(s) (``;``-separated in the CSV), or ``None``.
        seen_in_training: whether the demo models saw this image (or a copy of it) in training.
        source: where the file was copied from (relative to the datasets folder).
    """

    path: Path
    dataset: str
    label: str
    mask: tuple[Path, ...] | None = None
    seen_in_training: bool = False
    source: str = ""

    @property
    def name(self) -> str:
        """What the sample picker shows: ``label: file name``."""
        return f"{self.label}: {self.path.name}"


_SAMPLE_COLUMNS = ("path", "dataset", "label", "mask", "seen_in_training", "source")


def load_samples(samples_dir: str | Path | None = None) -> list[Sample]:
    """Read the bundled sample catalogue ``samples.csv`` (paths relative to its folder).

    Args:
        samples_dir: folder holding ``samples.csv`` (default :func:`medvit.assets.samples_dir`).

    Raises:
        FileNotFoundError: the catalogue, or an image or mask it lists, is missing.
        ValueError: the catalogue lacks a column.
    """
    samples_dir = Path(samples_dir) if samples_dir is not None else bundled_samples_dir()
    catalogue = samples_dir / "samples.csv"
    if not catalogue.is_file():
        raise FileNotFoundError(f"{catalogue} not found; the bundled samples are missing from the installed package")
    with open(catalogue, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in _SAMPLE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{catalogue}: missing columns {missing}; expected {', '.join(_SAMPLE_COLUMNS)}")
        rows = list(reader)
    samples = []
    for row in rows:
        path = samples_dir / row["path"]
        masks = tuple(samples_dir / m for m in row["mask"].split(";") if m) or None
        for file in (path, *(masks or ())):
            if not file.is_file():
                raise FileNotFoundError(f"{catalogue}: {file} is listed but missing")
        samples.append(
            Sample(
                path=path,
                dataset=row["dataset"],
                label=row["label"],
                mask=masks,
                seen_in_training=row["seen_in_training"].strip().lower() in ("1", "true", "yes"),
                source=row["source"],
            )
        )
    return samples


def read_upload(
    data: bytes,
    name: str = "upload",
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """Validate and decode an uploaded image file.

    Any mode Pillow reads (grayscale, palette, RGBA, 16-bit, CMYK) becomes RGB ``uint8``
    (see :func:`medvit.data.images.read_image`).

    Args:
        data: the uploaded bytes.
        name: the file name, used in messages.
        max_bytes: largest accepted file size.
        max_pixels: largest accepted width x height, checked before decoding.

    Returns:
        (H, W, 3) ``uint8`` RGB array.

    Raises:
        ValueError: the file is empty, too large, not an image, corrupt, or has too many pixels
            (an :class:`~medvit.data.images.ImageReadError` for the last three).
    """
    if len(data) > max_bytes:
        raise ValueError(
            f"{name}: the file is {len(data) / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB upload limit; "
            "upload a smaller image (e.g. re-save it as JPEG)"
        )
    try:
        return read_image(bytes(data), max_pixels=max_pixels)
    except ImageReadError as error:
        detail = str(error).removeprefix(f"<{len(data)} bytes>: ")
        raise ImageReadError(f"{name}: {detail}; upload a {UPLOAD_FORMATS} image") from error
