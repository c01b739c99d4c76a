"""The error every image reader raises for a file it cannot use (PNG/JPEG/... and DICOM alike)."""

from __future__ import annotations

__all__ = ["ImageReadError"]


class ImageReadError(ValueError):
    """An image file cannot be used: unreadable, truncated, empty, too large or of an unknown mode.

    Attributes:
        reason: a short category for reports (``empty file``, ``decompression bomb``, ``truncated or
            corrupt``, ``not a readable image``, ``unsupported image mode``, ``mask size differs``,
            ``not a binary mask``, and for DICOM ``no pixel data``, ``broken DICOM header``,
            ``truncated pixel data``, ``unsupported transfer syntax``, ...).
    """

    def __init__(self, message: str, reason: str = "unreadable image") -> None:
        super().__init__(message)
        self.reason = reason
