"""Paths from a manifest (or a config) that must stay inside the data folder they are relative to."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

__all__ = ["contained_path", "leaves_root"]


def leaves_root(relative: str) -> bool:
    """Whether a manifest path points outside its data folder: absolute, or ``..`` past the top.

    The check is on the path as written (normalised, like ``os.path.normpath``), so ``a/../b.png``
    is fine and ``../../etc/passwd`` or ``/etc/shadow`` is not. Symbolic links inside the data folder
    are its owner's choice and are followed.
    """
    text = str(relative).replace("\\", "/")
    if PurePosixPath(text).is_absolute() or os.path.isabs(text):
        return True
    return os.path.normpath(text).replace("\\", "/").split("/")[0] == ".."


def contained_path(root: str | Path, relative: str, where: str = "manifest") -> Path:
    """``root / relative``, refusing a path that leaves ``root`` (see :func:`leaves_root`).

    Raises:
        ValueError: ``relative`` is absolute or climbs out of ``root``; the message names ``where``.
    """
    if leaves_root(relative):
        raise ValueError(
            f"{where}: path {relative!r} leaves the data folder {root}; manifest paths must be relative to it "
            "and stay inside (re-create the manifest with 'medvit prepare')"
        )
    return Path(root) / relative
