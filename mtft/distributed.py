"""Collectives shared by the trainer and the adapters (each free with one process), and views of a parameter that
hold under ZeRO-3 sharding. The leaf half of the DeepSpeed seam; the engine half is training/engine.py."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
import torch.distributed as dist


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, into a detached copy."""
    out = tensor.detach().clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(out)
    return out


def gather_lists(items: list) -> list:
    """Every rank's list, concatenated in rank order, on every rank (a collective of picklable objects)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return items
    gathered: list[list] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def gather_names(names: list[str]) -> list[str]:
    """The union of every rank's list, in rank order (a collective)."""
    return list(dict.fromkeys(gather_lists(names)))


def same_on_all_ranks(value: Any) -> Any:
    """Rank 0's value, everywhere."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def is_rank_zero() -> bool:
    """The rank that speaks for the run (also before the process group exists, from the launcher's RANK)."""
    return dist.get_rank() == 0 if dist.is_initialized() else os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def rank_zero_first():
    """Rank 0 runs the block before the others (e.g. to fill a shared on-disk cache the others then read)."""
    several = dist.is_initialized() and dist.get_world_size() > 1
    if several and dist.get_rank() != 0:
        dist.barrier()
    yield
    if several and dist.get_rank() == 0:
        dist.barrier()


# ZeRO-3 leaves each rank a shard of every parameter; DeepSpeed records the whole one's size and shape on it.


def full_numel(param: torch.Tensor) -> int:
    """A parameter's whole size, also where this rank holds only a ZeRO-3 shard of it."""
    return getattr(param, "ds_numel", param.numel())


def full_shape(param: torch.Tensor) -> torch.Size:
    return getattr(param, "ds_shape", param.shape)


def local_values(param: torch.Tensor) -> torch.Tensor:
    """The values this rank holds: its ZeRO-3 shard, or the whole parameter."""
    return getattr(param, "ds_tensor", param)
