"""Atomic file writes: a reader never sees half a file (temporary file in the same folder, then ``os.replace``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_save", "atomic_write_text"]


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    atomic_save(Path(path), lambda tmp: Path(tmp).write_text(text))


def atomic_save(path: Path, save: Callable[[str], object]) -> None:
    """Call ``save(tmp)`` on a temporary file next to ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; run files are meant to be shared
    try:
        save(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
