"""Reading images and masks as RGB ``uint8`` arrays, with decode validation.

Every image that medvit touches (manifest validation, training, the app, explanations) goes through
:func:`read_image`, so that grayscale, palette, RGBA, 16-bit and CMYK files, and DICOM files
(:mod:`medvit.data.dicom`), become the same ``(H, W, 3)`` RGB array everywhere. Masks go through
:func:`read_mask`: several mask files of one image (BUSI's ``_mask``, ``_mask_1``, ``_mask_2``) are
merged by union, each binarised with ``> 0`` after conversion to ``L``; a mask must be binary (two
grey levels at most), so that a photograph given as a mask is refused instead of scored, unless it
is declared a label map (every non-zero label is foreground).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medvit.data.dicom import is_dicom, read_dicom
from medvit.errors import ImageReadError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MASK_SEPARATOR",
    "ImageReadError",
    "open_image",
    "to_rgb_array",
    "decoded_size",
    "read_image",
    "read_mask",
    "split_mask_paths",
]

_logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 50_000_000
"""Images with more pixels than this are refused as possible decompression bombs."""

MASK_SEPARATOR = ";"
"""Separator of several mask paths in one manifest ``mask`` cell; the masks are merged by union."""

ImageSource = str | Path | bytes


def _describe(source: ImageSource) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, bytes) else str(source)


def _head(handle: io.BytesIO, size: int = 8) -> str:
    """The first bytes of an encoded image as hex (what an unrecognised file starts with)."""
    return handle.getvalue()[:size].hex(" ") or "(none)"


def open_image(source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image, refusing decompression bombs before decoding.

    Args:
        source: a file path or the encoded bytes.
        max_pixels: the largest accepted width x height, checked from the header before any pixel is
            decoded; ``None`` disables the check (Pillow's own bomb limit still applies).

    Returns:
        The decoded PIL image in its original mode, with the EXIF orientation applied.

    Raises:
        FileNotFoundError: the path does not exist.
        ImageReadError: the file is empty, not an image, truncated or corrupt, or too large.
    """
    name = _describe(source)
    if isinstance(source, bytes):
        if not source:
            raise ImageReadError(f"{name}: empty file (0 bytes)", "empty file")
        handle = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image file")
        if path.stat().st_size == 0:
            raise ImageReadError(f"{path}: empty file (0 bytes)", "empty file")
        handle = io.BytesIO(path.read_bytes())
    try:
        image = Image.open(handle)
    except Image.DecompressionBombError as error:
        raise ImageReadError(f"{name}: decompression bomb refused ({error})", "decompression bomb") from error
    except UnidentifiedImageError as error:  # its message names the BytesIO object's memory address
        raise ImageReadError(
            f"{name}: not a readable image (no image format recognised in its first bytes {_head(handle)})",
            "not a readable image",
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"{name}: not a readable image ({error})", "not a readable image") from error
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageReadError(f"{name}: invalid image size {width}x{height}", "not a readable image")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageReadError(
            f"{name}: decompression bomb refused: {width}x{height} = {width * height:,} pixels "
            f"exceeds max_pixels={max_pixels:,}; raise max_pixels if the image is genuine",
            "decompression bomb",
        )
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as error:
        raise ImageReadError(f"{name}: decompression bomb refused ({error})", "decompression bomb") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageReadError(f"{name}: truncated or corrupt image data ({error})", "truncated or corrupt") from error
    return image


def _high_bit_depth_to_uint8(image: Image.Image) -> np.ndarray:
    """16-bit (``I;16*``), 32-bit integer (``I``) or float (``F``) gray to ``uint8`` (H, W)."""
    x = np.asarray(image)
    if image.mode == "F":
        # float gray: [0, 1] when it fits, else taken as 0-255
        x = np.nan_to_num(x.astype(np.float64))
        if x.max(initial=0.0) <= 1.0:
            x = x * 255.0
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)
    # 16-bit range (the only one PNG/TIFF gray images use for I;16 and I): keep the top 8 bits' worth,
    # rounding to nearest, so 65535 -> 255 and 0 -> 0.
    x = np.clip(x.astype(np.int64), 0, 65535)
    return ((x * 255 + 32767) // 65535).astype(np.uint8)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image of any supported mode to an RGB ``uint8`` (H, W, 3) array.

    Gray (``1``, ``L``, ``LA``), palette (``P``, ``PA``), ``RGBA``, ``CMYK``, ``YCbCr`` and 16-bit
    or float gray (``I;16*``, ``I``, ``F``) are converted; the alpha channel is dropped (medical
    images are opaque; a transparent pixel keeps its colour).

    Raises:
        ImageReadError: the mode cannot be converted.
    """
    mode = image.mode
    if mode == "RGB":
        rgb = np.asarray(image)
    elif mode.startswith("I") or mode == "F":
        gray = _high_bit_depth_to_uint8(image)
        rgb = np.repeat(gray[..., None], 3, axis=-1)
    elif mode in ("P", "PA"):
        rgb = np.asarray(image.convert("RGBA").convert("RGB"))
    elif mode in ("1", "L", "LA", "La", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV"):
        rgb = np.asarray(image.convert("RGB"))
    else:
        raise ImageReadError(
            f"unsupported image mode {mode!r}; convert the file to RGB or gray PNG/JPEG", "unsupported image mode"
        )
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def read_image(source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS, frame: int = 0) -> np.ndarray:
    """Read an image file (or its bytes) as an RGB ``uint8`` array of shape (H, W, 3).

    Args:
        source: a file path or the encoded bytes (an upload); DICOM files (a ``.dcm`` name or the
            ``DICM`` marker) are read by :func:`medvit.data.dicom.read_dicom`.
        max_pixels: decompression-bomb guard, see :func:`open_image`.
        frame: the frame of a multi-frame DICOM file, 0-based (other formats: ignored).

    Raises:
        FileNotFoundError: the path does not exist.
        ImageReadError: the file is not a usable image (message says why).
    """
    if is_dicom(source):
        return read_dicom(source, frame=frame, max_pixels=max_pixels).rgb
    image = open_image(source, max_pixels=max_pixels)
    try:
        return to_rgb_array(image)
    except ImageReadError as error:
        raise ImageReadError(f"{_describe(source)}: {error}", error.reason) from error


def decoded_size(source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(W, H) of an image after decoding it completely (what ``medvit prepare`` checks every file with).

    Raises:
        FileNotFoundError / ImageReadError: as :func:`read_image`.
    """
    if is_dicom(source):
        height, width = read_dicom(source, max_pixels=max_pixels).rgb.shape[:2]
        return width, height
    return open_image(source, max_pixels=max_pixels).size


def _mask_to_binary(image: Image.Image, path: str | Path, label_map: bool) -> np.ndarray:
    """``> 0`` of a mask's grey levels; more than two levels is refused unless ``label_map``."""
    if image.mode.startswith("I") or image.mode == "F":
        levels = np.asarray(image)
    else:
        levels = np.asarray((image.convert("RGBA") if image.mode in ("P", "PA") else image).convert("L"))
    if not label_map:
        values = np.unique(levels)
        if values.size > 2:
            raise ImageReadError(
                f"{path}: not a binary mask ({values.size} grey levels, e.g. a photograph); a mask holds 0 for "
                "the background and one value for the lesion: pass the right mask file, or declare label maps",
                "not a binary mask",
            )
    return levels > 0


def split_mask_paths(value: str | Sequence[str | Path] | None) -> list[str]:
    """Split a manifest ``mask`` cell (``a.png;b.png``) into its paths; empty or NaN gives ``[]``."""
    if value is None:
        return []
    if isinstance(value, float):  # NaN from pandas
        return []
    if isinstance(value, (str, Path)):
        return [part for part in str(value).split(MASK_SEPARATOR) if part.strip()]
    return [str(part) for part in value]


def read_mask(
    sources: str | Path | Sequence[str | Path],
    shape: tuple[int, int] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    label_map: bool = False,
) -> np.ndarray:
    """Read one or several mask files as one binary ``uint8`` (H, W) array in {0, 1}.

    Each file is converted to ``L`` and binarised with ``> 0``; several files are merged by union.
    A file with more than two grey levels is refused (a photograph is no mask) unless ``label_map``.

    Args:
        sources: a path, a ``;``-joined string of paths, or a sequence of paths.
        shape: the (H, W) of the image; required when ``sources`` is empty (an all-zero mask is
            returned) and checked against every mask otherwise.
        max_pixels: decompression-bomb guard, see :func:`open_image`.
        label_map: the masks are label maps (any number of labels; every non-zero label is foreground).

    Raises:
        ImageReadError: a mask is unreadable, not binary (unless ``label_map``), or its size differs
            from ``shape`` or the other masks.
        ValueError: no mask path and no ``shape``.
    """
    paths = split_mask_paths(sources if not isinstance(sources, Path) else str(sources))
    if not paths:
        if shape is None:
            raise ValueError("read_mask: no mask path given; pass shape=(H, W) to get an empty mask")
        return np.zeros(shape, dtype=np.uint8)
    merged: np.ndarray | None = None
    for path in paths:
        binary = _mask_to_binary(open_image(path, max_pixels=max_pixels), path, label_map)
        expected = shape if merged is None else merged.shape
        if expected is not None and tuple(binary.shape) != tuple(expected):
            raise ImageReadError(
                f"{path}: mask size {binary.shape[1]}x{binary.shape[0]} (WxH) differs from the image's "
                f"{expected[1]}x{expected[0]}; fix or remove the mask",
                "mask size differs",
            )
        merged = binary if merged is None else merged | binary
    return merged.astype(np.uint8)
