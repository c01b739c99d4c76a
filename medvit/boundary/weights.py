"""Weight files: a ``.safetensors`` file is read here, or refused with its name and what is wrong.

``safetensors`` reports a 0-byte file, a pickle saved under a ``.safetensors`` name or a cut-off
download as ``SafetensorError: Error while deserializing header: ...``; this turns that into one line
naming the file and what to pass instead. Pickled checkpoints are read elsewhere with
``torch.load(weights_only=True)`` (:func:`medvit.models.checkpoints.read_state_dict`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

__all__ = ["read_safetensors"]

_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # a pickle protocol marker; torch.save's zip archive


def _what_it_is(path: Path) -> str:
    size = path.stat().st_size
    if size == 0:
        return "an empty file (0 bytes)"
    with path.open("rb") as handle:
        head = handle.read(8)
    if head.startswith(_PICKLE_MAGIC):
        return "a pickled PyTorch checkpoint (torch.save), not safetensors; rename it to .pth to load it as one"
    if size < 8:
        return f"{size} bytes, too short for a safetensors header"
    return "no valid safetensors header (a truncated download, or another format)"


def read_safetensors(path: str | Path, fix: str = "pass a complete .safetensors file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors file, on the CPU.

    Args:
        path: the ``.safetensors`` file.
        fix: what the message tells the user to do about a bad file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable safetensors file; the message says what it looks like instead.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found; {fix}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"{path}: not a readable safetensors file: {_what_it_is(path)}; {fix}") from error
    return tensors, metadata
