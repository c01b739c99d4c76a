"""DICOM images as RGB ``uint8`` arrays, read with pydicom; nothing of the patient leaves this module.

:func:`read_dicom` decodes one frame of a DICOM Part 10 file (``pydicom.dcmread`` and
``pydicom.pixels.pixel_array``, which decodes JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000 and
RLE through the pylibjpeg plugins, and converts ``YBR_FULL``/``YBR_FULL_422`` to RGB), then maps it
to 8 bits the way a viewer shows it (PS3.3 C.11):

- ``MONOCHROME1``/``MONOCHROME2``: the modality LUT (rescale slope/intercept), then the file's VOI
  LUT or window (``pydicom.pixels.apply_voi_lut``) when it has one, else the frame's min-max;
  ``MONOCHROME1`` is inverted (its 0 is white);
- ``PALETTE COLOR``: the file's palette (``pydicom.pixels.apply_color_lut``);
- ``RGB`` (and JPEG 2000's ``YBR_RCT``/``YBR_ICT``, which the decoder returns as RGB): scaled from
  Bits Stored to 8 bits.

MONAI's ``PydicomReader`` is not used: it reads volumes (series, affine, spacing) and applies neither
the VOI window, nor ``MONOCHROME1`` inversion, nor palettes, which a 2-D clinical export needs.

The result, :class:`DicomImage`, carries the pixels and a few technical fields (modality, size, frame,
photometric interpretation, bit depth, transfer syntax, how it was windowed) and nothing else of the
header: no patient name or ID, no dates, no institution. What cannot be used (not a DICOM file, no
file meta header, no pixel data such as an SR or an RT plan, a broken header, truncated pixel data,
a transfer syntax no installed plugin decodes, a frame out of range) raises
:class:`~medvit.data.images.ImageReadError` naming the file and what to do.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.uid import UID

from medvit.errors import ImageReadError

__all__ = ["DICOM_EXTENSIONS", "DicomImage", "is_dicom", "read_dicom"]

_logger = logging.getLogger(__name__)

DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
"""File name suffixes (lower case) taken for DICOM files; files with the ``DICM`` marker are DICOM whatever their name."""

_PREAMBLE = 128  # the DICM marker follows a 128-byte preamble (PS3.10 7.1)
_MARKER = b"DICM"
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_RGB_LIKE = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT")
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")

DicomSource = str | Path | bytes


@dataclass(frozen=True)
class DicomImage:
    """One decoded DICOM frame and the technical facts the page shows (never patient data).

    Attributes:
        rgb: (H, W, 3) ``uint8``.
        modality: (0008,0060) Modality, e.g. ``US``, ``CT``; ``""`` when absent.
        frame: the decoded frame, 0-based.
        num_frames: (0028,0008) Number of Frames (1 for a single-frame file).
        photometric: (0028,0004) Photometric Interpretation of the stored pixels.
        bits_stored: (0028,0101) Bits Stored.
        transfer_syntax: the transfer syntax's name, e.g. ``JPEG Baseline (Process 1)``.
        windowing: how the pixels became 8 bits: ``window from the file``, ``VOI LUT from the file``,
            ``min-max``, ``palette``, ``bit depth`` or ``none`` (8-bit colour).
    """

    rgb: np.ndarray
    modality: str
    frame: int
    num_frames: int
    photometric: str
    bits_stored: int
    transfer_syntax: str
    windowing: str

    @property
    def summary(self) -> str:
        """One line for the page: ``US, 320 x 240, frame 1 of 30``."""
        height, width = self.rgb.shape[:2]
        text = f"{self.modality or 'modality not given'}, {width} x {height}"
        return text + (f", frame {self.frame + 1} of {self.num_frames}" if self.num_frames > 1 else "")


def _describe(source: DicomSource) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, bytes) else str(source)


def _head(source: DicomSource) -> bytes:
    if isinstance(source, bytes):
        return source[: _PREAMBLE + len(_MARKER)]
    try:
        with open(source, "rb") as handle:
            return handle.read(_PREAMBLE + len(_MARKER))
    except OSError:
        return b""


def is_dicom(source: DicomSource) -> bool:
    """Whether ``source`` is (meant to be) DICOM: a ``.dcm``/``.dicom`` name, or ``DICM`` at byte 128."""
    if not isinstance(source, bytes) and Path(source).suffix.lower() in DICOM_EXTENSIONS:
        return True
    return _head(source)[_PREAMBLE:] == _MARKER


def _read_dataset(source: DicomSource, name: str) -> pydicom.Dataset:
    if not isinstance(source, bytes):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such DICOM file")
        source = path.read_bytes()
    if not source:
        raise ImageReadError(f"{name}: empty file (0 bytes)", "empty file")
    if source[_PREAMBLE : _PREAMBLE + len(_MARKER)] != _MARKER:
        raise ImageReadError(
            f"{name}: not a DICOM Part 10 file (no 'DICM' marker at byte 128, so no file meta header); "
            "export the image from the PACS or viewer as a DICOM file",
            "not a DICOM file",
        )
    try:
        return pydicom.dcmread(io.BytesIO(source))
    except (InvalidDicomError, ValueError, KeyError, EOFError, OSError, TypeError, AttributeError) as error:
        raise ImageReadError(f"{name}: broken DICOM header ({_first_line(error)})", "broken DICOM header") from error


def _first_line(error: BaseException, limit: int = 240) -> str:
    """The error's text on one line (pydicom lists each plugin's failure on a line of its own)."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _transfer_syntax(ds: pydicom.Dataset) -> UID | None:
    meta = getattr(ds, "file_meta", None)
    return meta.get("TransferSyntaxUID") if meta is not None else None


def _sop_class(ds: pydicom.Dataset) -> str:
    uid = ds.get("SOPClassUID")
    if uid is None:
        return "SOP class not given"
    name = UID(str(uid)).name
    return f"SOP class {name}" if name and name != str(uid) else f"SOP class {uid}"


def _to_uint8(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linear map of ``[low, high]`` to ``[0, 255]`` (clipped); a flat range gives zeros."""
    x = np.asarray(x, dtype=np.float64)
    if not high > low:
        return np.zeros(x.shape, dtype=np.uint8)
    return np.clip(np.rint((x - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


def _voi_range(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """Output range of the file's VOI transform, or ``None`` when it has neither VOI LUT nor window."""
    voi_lut = ds.get("VOILUTSequence")
    if voi_lut:
        bits = int(voi_lut[0].LUTDescriptor[2])  # LUT Data lies in [0, 2**bits - 1] (PS3.3 C.11.2.1.1)
        return 0.0, float(2**bits - 1)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        # what the window maps values below and above it to (PS3.3 C.11.2.1.2): its output range
        bounds = apply_voi_lut(np.array([-np.inf, np.inf]), ds, index=0)
        return float(np.min(bounds)), float(np.max(bounds))
    return None


def _monochrome(frame: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, str]:
    values = apply_modality_lut(frame, ds)
    voi = _voi_range(ds)
    if voi is not None:
        gray, how = _to_uint8(apply_voi_lut(values, ds, index=0), *voi), (
            "VOI LUT from the file" if ds.get("VOILUTSequence") else "window from the file"
        )
    else:
        values = np.nan_to_num(np.asarray(values, dtype=np.float64))
        gray, how = _to_uint8(values, float(values.min()), float(values.max())), "min-max"
    if ds.PhotometricInterpretation == "MONOCHROME1":
        gray = 255 - gray
    return np.repeat(gray[..., None], 3, axis=-1), how


def _colour(frame: np.ndarray, ds: pydicom.Dataset, photometric: str) -> tuple[np.ndarray, str]:
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(frame, ds)
        top = 255 if rgb.dtype == np.uint8 else 65535  # palette entries are 8- or 16-bit (PS3.3 C.7.6.3.1.6)
        return _to_uint8(rgb, 0, top), "palette"
    if frame.dtype == np.uint8:
        return frame, "none"
    return _to_uint8(frame, 0, 2 ** int(ds.BitsStored) - 1), "bit depth"


_REQUIRED = {"Rows": "(0028,0010)", "Columns": "(0028,0011)", "BitsAllocated": "(0028,0100)",
             "PhotometricInterpretation": "(0028,0004)"}


def read_dicom(source: DicomSource, frame: int = 0, max_pixels: int | None = None) -> DicomImage:
    """Decode one frame of a DICOM file as RGB ``uint8`` (see the module docstring for the mapping).

    Args:
        source: a file path or the file's bytes (an upload).
        frame: the frame of a multi-frame file, 0-based (default the first).
        max_pixels: the largest accepted Rows x Columns, checked from the header before decoding.

    Returns:
        A :class:`DicomImage` (pixels and technical fields only).

    Raises:
        FileNotFoundError: the path does not exist.
        ImageReadError: the file cannot be used; the message names it and says why.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about header quirks it reads past; errors are raised
        return _decode(source, frame, max_pixels)


def _decode(source: DicomSource, frame: int, max_pixels: int | None) -> DicomImage:
    name = _describe(source)
    ds = _read_dataset(source, name)
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise ImageReadError(
            f"{name}: no pixel data ({_sop_class(ds)}): not an image; pick an image object of the study",
            "no pixel data",
        )
    syntax = _transfer_syntax(ds)
    if syntax is None:
        raise ImageReadError(
            f"{name}: the file meta header has no Transfer Syntax UID (0002,0010); re-export the file",
            "broken DICOM header",
        )
    missing = [f"{keyword} {tag}" for keyword, tag in _REQUIRED.items() if keyword not in ds]
    if missing:
        raise ImageReadError(
            f"{name}: broken image header (missing {', '.join(missing)}); re-export the file", "broken DICOM header"
        )
    try:
        photometric = str(ds.PhotometricInterpretation)
        rows, columns = int(ds.Rows), int(ds.Columns)
        bits_stored = int(ds.get("BitsStored", ds.BitsAllocated))
        num_frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, ValueError, TypeError) as error:
        raise ImageReadError(
            f"{name}: broken image header ({_first_line(error)}); re-export the file", "broken DICOM header"
        ) from error
    if rows <= 0 or columns <= 0:
        raise ImageReadError(f"{name}: invalid image size {columns}x{rows} in the header", "broken DICOM header")
    if max_pixels is not None and rows * columns > max_pixels:
        raise ImageReadError(
            f"{name}: {columns}x{rows} = {rows * columns:,} pixels exceeds max_pixels={max_pixels:,}; "
            "raise max_pixels if the image is genuine",
            "decompression bomb",
        )
    if not 0 <= frame < num_frames:
        raise ImageReadError(
            f"{name}: frame {frame + 1} asked for, but the file has {num_frames} frame(s); choose 1 to {num_frames}",
            "no such frame",
        )
    if photometric not in (*_MONOCHROME, *_RGB_LIKE, "PALETTE COLOR"):
        raise ImageReadError(
            f"{name}: photometric interpretation {photometric!r} is not supported; export the image as "
            "MONOCHROME2, RGB or YBR_FULL",
            "unsupported photometric interpretation",
        )
    try:
        pixels = pixel_array(ds, index=frame if num_frames > 1 else None)
        rgb, windowing = _monochrome(pixels, ds) if photometric in _MONOCHROME else _colour(pixels, ds, photometric)
    except NotImplementedError as error:
        raise ImageReadError(
            f"{name}: transfer syntax {syntax.name or syntax} ({syntax}) cannot be decoded here ({_first_line(error)}); "
            "re-export the image uncompressed or as JPEG, JPEG-LS, JPEG 2000 or RLE",
            "unsupported transfer syntax",
        ) from error
    except (ValueError, RuntimeError, KeyError, AttributeError, TypeError, EOFError, OSError) as error:
        text = _first_line(error)
        reason = "truncated pixel data" if "less than expected" in text or "truncat" in text.lower() else "undecodable pixel data"
        raise ImageReadError(f"{name}: {reason} ({syntax.name or syntax}: {text}); re-export the file", reason) from error
    if rgb.shape[:2] != (rows, columns) or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ImageReadError(
            f"{name}: decoded pixels of shape {rgb.shape} do not match the header's {rows}x{columns}; re-export the file",
            "undecodable pixel data",
        )
    return DicomImage(
        rgb=np.ascontiguousarray(rgb, dtype=np.uint8),
        modality=str(ds.get("Modality", "") or ""),
        frame=frame,
        num_frames=num_frames,
        photometric=photometric,
        bits_stored=bits_stored,
        transfer_syntax=str(syntax.name or syntax),
        windowing=windowing,
    )
