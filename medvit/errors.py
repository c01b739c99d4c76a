"""The error types medvit raises when a user's request cannot be met (one module for the whole package).

A bad setting or a bad file is a :class:`ValueError` or an :class:`OSError` (``FileNotFoundError``, a
read-only ``--out``), as Python's own functions raise them. An unknown name and a run that cannot go on
would be a ``KeyError`` and a ``RuntimeError``, which are also what a bug raises; medvit raises the
subclasses of :class:`UserError` below instead. ``medvit`` reports a :data:`USER_ERRORS` error in one line
and any other exception as a bug (``-v`` shows the traceback of both; :func:`medvit.cli.main`).
"""

from __future__ import annotations

__all__ = ["USER_ERRORS", "ImageReadError", "RunError", "UnknownNameError", "UserError"]


class UserError(Exception):
    """A request medvit cannot meet for a reason the user can fix; the message names the thing and the fix."""


class UnknownNameError(UserError, KeyError):
    """A name that is not there: a model, a dataset, a metrics column, a checkpoint key (the message lists
    the known ones)."""

    def __str__(self) -> str:  # KeyError's own str() quotes the message
        return str(self.args[0]) if self.args else ""


class RunError(UserError, RuntimeError):
    """A command that cannot go on for a reason the user can fix: no usable image, a non-finite loss, no CUDA."""


class ImageReadError(UserError, ValueError):
    """An image file cannot be used: unreadable, truncated, empty, too large or of an unknown mode (the error
    every image reader raises, PNG/JPEG/... and DICOM alike).

    Attributes:
        reason: a short category for reports (``empty file``, ``decompression bomb``, ``truncated or
            corrupt``, ``not a readable image``, ``unsupported image mode``, ``mask size differs``,
            ``not a binary mask``, and for DICOM ``no pixel data``, ``broken DICOM header``,
            ``truncated pixel data``, ``unsupported transfer syntax``, ...).
    """

    def __init__(self, message: str, reason: str = "unreadable image") -> None:
        super().__init__(message)
        self.reason = reason


USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, OSError)
"""What ``medvit`` reports as the user's error, in one line: medvit's own types, bad values, file errors."""
