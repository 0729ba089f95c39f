"""Collectives shared by the trainer and the adapters; each is free with one process."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as dist


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, into a detached copy."""
    out = tensor.detach().clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(out)
    return out


def same_on_all_ranks(value: Any) -> Any:
    """Rank 0's value, everywhere."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def rank_zero_first():
    """Rank 0 runs the block before the others (e.g. to fill a shared on-disk cache the others then read)."""
    several = dist.is_initialized() and dist.get_world_size() > 1
    if several and dist.get_rank() != 0:
        dist.barrier()
    yield
    if several and dist.get_rank() == 0:
        dist.barrier()
