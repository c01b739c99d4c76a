"""What the page reads as input: an uploaded image file, or a bundled sample (``medvit/assets/samples/``).

:func:`open_upload` validates an upload (size, decodability, pixel count) and decodes it, a DICOM file
through :func:`medvit.data.dicom.read_dicom` (one frame; the page shows modality, size and frame, and
nothing of the patient); :func:`read_upload` is its pixels; :func:`load_samples` reads the sample
catalogue ``samples.csv``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medvit.data.datasets import IMAGE_EXTENSIONS
from medvit.data.dicom import is_dicom, read_dicom
from medvit.data.images import DEFAULT_MAX_PIXELS, ImageReadError, read_image
from medvit.assets import samples_dir as bundled_samples_dir

__all__ = [
    "MAX_UPLOAD_BYTES",
    "MAX_IMAGE_PIXELS",
    "TRANSFER_LIMIT_BYTES",
    "UPLOAD_FORMATS",
    "UPLOAD_TYPES",
    "Sample",
    "Upload",
    "load_samples",
    "open_upload",
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

UPLOAD_FORMATS = "PNG, JPEG, BMP, TIFF, GIF, WebP or DICOM"
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


@dataclass(frozen=True)
class Upload:
    """A decoded upload and what the page may say about it (never patient data).

    Attributes:
        rgb: (H, W, 3) ``uint8``.
        is_dicom: read as DICOM.
        modality: the DICOM modality (``US``, ``CT``, ...; ``""`` otherwise).
        frame: the decoded frame, 0-based.
        num_frames: frames in the file (1 for a plain image).
    """

    rgb: np.ndarray
    is_dicom: bool = False
    modality: str = ""
    frame: int = 0
    num_frames: int = 1

    @property
    def summary(self) -> str:
        """``DICOM US, 320 x 240, frame 2 of 30`` (or ``320 x 240`` for a plain image)."""
        height, width = self.rgb.shape[:2]
        text = f"{width} x {height}"
        if self.is_dicom:
            text = f"DICOM {self.modality or '(modality not given)'}, {text}"
        return text + (f", frame {self.frame + 1} of {self.num_frames}" if self.num_frames > 1 else "")


def open_upload(
    data: bytes,
    name: str = "upload",
    frame: int = 0,
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Upload:
    """Validate and decode an uploaded image or DICOM file.

    Any mode Pillow reads (grayscale, palette, RGBA, 16-bit, CMYK) becomes RGB ``uint8``
    (see :func:`medvit.data.images.read_image`); a DICOM file is read by
    :func:`medvit.data.dicom.read_dicom`, of which only modality, size and frame are kept.

    Args:
        data: the uploaded bytes.
        name: the file name, used in messages.
        frame: the frame of a multi-frame DICOM file, 0-based.
        max_bytes: largest accepted file size.
        max_pixels: largest accepted width x height, checked before decoding.

    Raises:
        ValueError: the file is empty, too large, not an image, corrupt, a DICOM object without an image,
            or has too many pixels (an :class:`~medvit.data.images.ImageReadError` for all but the size).
    """
    if len(data) > max_bytes:
        raise ValueError(
            f"{name}: the file is {len(data) / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB upload limit; "
            "upload a smaller image (e.g. re-save it as JPEG)"
        )
    data = bytes(data)
    try:
        if is_dicom(data) or Path(name).suffix.lower() in (".dcm", ".dicom"):
            image = read_dicom(data, frame=frame, max_pixels=max_pixels)
            return Upload(image.rgb, True, image.modality, image.frame, image.num_frames)
        return Upload(read_image(data, max_pixels=max_pixels))
    except ImageReadError as error:
        detail = str(error).removeprefix(f"<{len(data)} bytes>: ")
        raise ImageReadError(f"{name}: {detail}; upload a {UPLOAD_FORMATS} image", error.reason) from error


def read_upload(
    data: bytes,
    name: str = "upload",
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """The (H, W, 3) ``uint8`` RGB pixels of :func:`open_upload` (the first frame of a DICOM file).

    Raises:
        ValueError: as :func:`open_upload`.
    """
    return open_upload(data, name, max_bytes=max_bytes, max_pixels=max_pixels).rgb
