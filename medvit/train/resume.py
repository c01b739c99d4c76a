"""Atomic checkpoint commits and RNG state for exact resume.

Every epoch ends with one commit: the weights go to a pending file, ``last_state.pt`` (optimizer,
scheduler, scaler, counters, metrics history, RNG states; tensors and primitives only, so it loads
with ``weights_only=True``) is replaced atomically and names that file, then the pending file is
renamed to ``last.safetensors``. A kill at any point leaves a consistent pair; temporary files of
a write that a kill interrupted are removed by :func:`clean_interrupted_writes` on the next start.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medvit.run_dir import LAST_STATE, LAST_WEIGHTS, atomic_save, save_run_weights
from medvit.train.sampling import mix_seed

__all__ = [
    "clean_interrupted_writes",
    "commit_checkpoint",
    "recover_checkpoint",
    "rng_state",
    "seed_epoch",
    "set_aside_unusable_state",
    "set_rng_state",
    "try_recover_checkpoint",
]

UNUSABLE_SUFFIX = ".unusable"


def rng_state(sampler_seed: int, epoch: int) -> dict[str, Any]:
    """torch/numpy/python RNG states as tensors and primitives (``weights_only``-loadable)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "sampler": {"seed": int(sampler_seed), "next_epoch": int(epoch)},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed torch/numpy/python for one epoch of this rank (dropout, drop-path, ...)."""
    s = mix_seed(seed, epoch, rank, 2)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def _pending_name(epoch: int) -> str:
    return f".last.epoch{epoch}.safetensors"


def commit_checkpoint(out: Path, model: nn.Module, state: dict[str, Any]) -> None:
    """Write ``last.safetensors`` + ``last_state.pt`` as one atomic step (see the module docstring)."""
    epoch = state["epoch"]
    pending = out / _pending_name(epoch)
    save_run_weights(model, pending)
    state = dict(state, pending_weights=pending.name)
    atomic_save(out / LAST_STATE, lambda tmp: torch.save(state, tmp))  # the commit point
    os.replace(pending, out / LAST_WEIGHTS)


def clean_interrupted_writes(out: Path) -> list[Path]:
    """Remove the temporary files of writes a kill interrupted (``.NAME.*.tmp``); returns them.

    Such files were never renamed into place (see :func:`medvit.run_dir.atomic_save`), so no
    committed result lives in them.
    """
    removed = [path for path in out.glob(".*.tmp") if path.is_file()]
    for path in removed:
        path.unlink()
    return removed


def set_aside_unusable_state(out: Path) -> Path:
    """Rename an unreadable ``last_state.pt`` to ``last_state.pt.unusable`` (kept, not deleted)."""
    kept = out / (LAST_STATE + UNUSABLE_SUFFIX)
    os.replace(out / LAST_STATE, kept)
    return kept


def try_recover_checkpoint(out: Path, finish_commit: bool = True) -> dict[str, Any] | None:
    """The committed state of ``out``, or ``None`` when there is none or it is unreadable.

    Args:
        out: the run directory.
        finish_commit: also finish an interrupted commit (see :func:`recover_checkpoint`); with
            ``False`` nothing in ``out`` changes.
    """
    state_path = out / LAST_STATE
    if not state_path.is_file():
        return None
    if finish_commit:
        try:
            return recover_checkpoint(out)
        except ValueError:
            return None
    try:
        return torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises several types for a truncated or foreign file
        return None


def recover_checkpoint(out: Path) -> dict[str, Any]:
    """Load ``last_state.pt`` and finish an interrupted commit; returns the state."""
    state_path = out / LAST_STATE
    if not state_path.is_file():
        raise FileNotFoundError(
            f"{state_path} not found: {out} has no completed epoch to resume; start it again without --resume"
        )
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a truncated or foreign file
        raise ValueError(f"{state_path}: unreadable training state ({error}); start the run again") from error
    pending = out / state.get("pending_weights", "")
    if state.get("pending_weights") and pending.is_file():
        os.replace(pending, out / LAST_WEIGHTS)
    for stale in out.glob(".last.epoch*.safetensors"):
        stale.unlink()
    return state
