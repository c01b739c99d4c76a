"""How a training step runs fast: its precision (bf16 autocast where it pays) and ``torch.compile``.

Both engines (``medvit train`` and ``medvit pretrain``) run their step through :class:`TrainStep`, so a
config's ``precision`` and ``compile`` keys mean the same in both:

* ``precision: auto`` is bf16 autocast on CUDA and on CPUs with AMX tiles (Sapphire Rapids and later,
  where oneDNN's bf16 matmuls run on AMX), fp32 elsewhere. On a CPU with AVX-512-BF16 but no AMX, bf16
  autocast was *slower* than fp32 for every tiny backbone (``docs/benchmarks.md``), so ``auto`` keeps fp32
  there; ``bf16`` forces it, ``fp32`` turns it off.
* ``compile: true`` compiles the model with inductor. The first step pays the compilation (recorded
  as ``compile_s`` in ``metrics.csv``); a compilation that fails falls back to eager for the rest of the
  run, says why in the log, and the step is redone eagerly, so nothing is lost. Weights are always
  saved from the uncompiled module, so checkpoints never carry ``_orig_mod.`` prefixes.

Evaluation (validation during training, final predictions, ``medvit evaluate``) stays eager and, on the
CPU, in fp32: predictions of a run do not depend on the CPU they are computed on.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable

import torch
from torch import nn

__all__ = ["PRECISIONS", "TrainStep", "bf16_pays_on_cpu", "inference_amp", "resolve_precision", "train_autocast"]

_logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")


def bf16_pays_on_cpu() -> bool:
    """Whether this CPU has AMX tiles (bf16 matmuls several times faster than fp32)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe()) if probe is not None else False


def resolve_precision(requested: str, device: torch.device) -> str:
    """``fp32`` or ``bf16``: what ``requested`` (one of :data:`PRECISIONS`) means on ``device``.

    Raises:
        ValueError: ``requested`` is not one of :data:`PRECISIONS`.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"config key 'precision': got {requested!r}; allowed: {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16"
    return "bf16" if device.type == "cpu" and bf16_pays_on_cpu() else "fp32"


def train_autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when the resolved ``precision`` is ``bf16``; else a no-op."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def inference_amp(device: torch.device, precision: str) -> bool:
    """Whether evaluation autocasts (bf16 on CUDA only: CPU predictions stay fp32, see the module docstring)."""
    return device.type == "cuda" and precision == "bf16"


class TrainStep:
    """Forward and backward of one training step, compiled or eager, in the run's precision.

    Args:
        module: the model the step trains (DDP-wrapped or not); weights are read and saved from it.
        device: where it runs.
        precision: resolved precision (``fp32`` or ``bf16``).
        compile: compile ``module`` with ``torch.compile`` (inductor).

    Attributes:
        compiled: whether steps currently run compiled (false after a fallback).
        compile_s: seconds the first compiled step took beyond a steady one (known after the second
            step; ``0.0`` when eager).
        fallback_reason: why compilation was abandoned (``None`` when it was not).
    """

    def __init__(self, module: nn.Module, device: torch.device, precision: str, compile: bool) -> None:
        self.module, self.device, self.precision = module, device, precision
        self._compiled_module = torch.compile(module) if compile else None
        self.compile_s = 0.0
        self.fallback_reason: str | None = None
        self._steps = 0
        self._first_s = 0.0

    @property
    def compiled(self) -> bool:
        return self._compiled_module is not None

    def __call__(self, loss_fn: Callable[[nn.Module], torch.Tensor]) -> torch.Tensor:
        """Run ``loss_fn(net)`` under autocast, then ``backward`` on its loss; returns the loss.

        The caller zeroes the gradients before and steps the optimizer after. On the first compiled
        step a failure of compilation (in the forward or the backward) switches to eager for good:
        the gradients are cleared and the step is redone eagerly; an error of the model itself
        therefore surfaces from that eager step.
        """
        if self._compiled_module is None:
            return self._forward_backward(self.module, loss_fn)
        self._steps += 1
        start = time.perf_counter()
        if self._steps > 1:
            loss = self._forward_backward(self._compiled_module, loss_fn)
            if self._steps == 2:
                self.compile_s = max(0.0, self._first_s - (time.perf_counter() - start))
            return loss
        try:
            loss = self._forward_backward(self._compiled_module, loss_fn)
        except Exception as error:  # noqa: BLE001 - any compiler failure; a model error re-raises eagerly below
            self.fallback_reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            _logger.warning("torch.compile failed (%s); continuing eagerly", self.fallback_reason)
            self._compiled_module = None
            for p in self.module.parameters():
                p.grad = None
            return self._forward_backward(self.module, loss_fn)
        self._first_s = time.perf_counter() - start
        return loss

    def _forward_backward(self, net: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor]) -> torch.Tensor:
        with train_autocast(self.device, self.precision):
            loss = loss_fn(net)
        loss.backward()
        return loss
