"""Where a training process runs: rank, world size, device and the process group (``torchrun``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from medvit.errors import RunError

__all__ = ["DistContext"]


@dataclass
class DistContext:
    """Where this process runs: rank, world size and device.

    Built from the ``torchrun`` environment by :meth:`from_env`; a plain ``python`` process is
    rank 0 of a world of 1 and never touches ``torch.distributed``.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "auto") -> "DistContext":
        """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and join the process group when N > 1."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if device == "cuda" and not torch.cuda.is_available():
            raise RunError("config device: cuda requested but CUDA is not available; use device: auto or cpu")
        torch_device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
        if use_cuda:
            torch.cuda.set_device(torch_device)
        owns_group = False
        if world_size > 1 and not (dist.is_available() and dist.is_initialized()):
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
            owns_group = True
        return cls(rank, world_size, local_rank, torch_device, owns_group)

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.is_distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any_true(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        if not self.is_distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
