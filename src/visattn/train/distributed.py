"""Distributed data parallel set-up for runs launched by ``torchrun``.

A single process needs no launcher: without torchrun's environment (WORLD_SIZE > 1) every
helper here is a no-op. Under torchrun the process group uses NCCL on CUDA and gloo on the
CPU; rank 0 alone writes files and draws the progress bar.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """Where this process stands in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device_kind: str) -> Dist:
    """Join the process group torchrun describes (if any) and return this process's place.
    On CUDA each process takes the GPU of its local rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    if device_kind == "cuda":
        torch.cuda.set_device(local)
    return Dist(rank, world, local)


def teardown(place: Dist) -> None:
    if place.active and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(place: Dist, flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is true on any process (a collective: every rank must call it)."""
    if not place.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast(place: Dist, value: Any) -> Any:
    """Rank 0's ``value`` on every process (a collective)."""
    if not place.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(place: Dist) -> None:
    if place.active:
        dist.barrier()
