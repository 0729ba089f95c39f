"""The process group (joined so that torchrun's restarts work, with a timeout), collectives shared by the trainer
and the adapters (each free with one process), and views of a parameter that hold under ZeRO-3 sharding. The leaf
half of the DeepSpeed seam; the engine half is training/engine.py."""

from __future__ import annotations

import atexit
import contextlib
import os
import time
import uuid
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

# How long the other ranks wait while rank 0 works alone (rank_zero_first: the tokenisation cache, whose first
# build can take long on big data). Its own allowance, so a short collective timeout never trips on it.
SOLO_WORK_ALLOWANCE = timedelta(hours=6)
_solo_group: Any = None  # a gloo group with that timeout, made beside the default group
_agent_store: Any = None  # torchrun's agent store, which outlives a restart


def start_process_group(backend: str, timeout: timedelta) -> None:
    """Join the launcher's process group, with `timeout` for every collective (a hung or lost peer then ends the
    run instead of hanging it), so that a group torchrun restarts can join again.

    Why not torch's own env:// join: under torchrun (TORCHELASTIC_USE_AGENT_STORE) every worker connects to the
    elastic agent's TCPStore, which lives as long as the agent, so across restarts. The process group writes the
    same keys in every attempt (gloo's addresses under "default_pg"), and a restarted rank can read the killed
    attempt's before its peer has overwritten them: gloo's connectFullMesh then fails with "Connection refused" to
    a dead process, or hangs. torchrun's TORCHELASTIC_RESTART_COUNT cannot name the attempt: an agent that restarts
    for a peer node's failure (a membership change) does not count it, so nodes can disagree. So the ranks agree
    on a fresh namespace of the store first (`_fresh_namespace`) and the group lives under it."""
    global _solo_group, _agent_store
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                              timeout=timeout)  # fmt: skip
        store = dist.PrefixStore(f"mtft/{_fresh_namespace(agent, rank, world, timeout)}", agent)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
        _agent_store = agent
    else:  # rank 0 hosts a store of its own, new in every process: nothing stale to read
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, timeout=timeout)
    if world > 1:
        _solo_group = dist.new_group(backend="gloo", timeout=max(timeout, SOLO_WORK_ALLOWANCE))
    atexit.register(_leave_process_group)


def _leave_process_group() -> None:
    """Take the groups and the store connection down before the interpreter does: left to its teardown, their
    threads can outlive the objects they use (seen as "terminate called" and exit -6 after a clean run)."""
    global _solo_group, _agent_store
    if dist.is_initialized():
        dist.destroy_process_group()
    _solo_group = _agent_store = None


def _fresh_namespace(store, rank: int, world: int, timeout: timedelta) -> str:
    """A name every rank of this attempt agrees on and no earlier attempt used: rank 0's random id. Each other
    rank posts a random id of its own under its rank; rank 0 answers under that id (a key no earlier attempt
    could have written), re-reading the posts until every rank has acknowledged, so a stale post is harmless."""
    me = uuid.uuid4().hex
    if rank != 0:
        store.set(f"mtft/joining/{rank}", me)
        store.wait([f"mtft/welcome/{me}"], timeout)
        attempt = store.get(f"mtft/welcome/{me}").decode()
        store.set(f"mtft/joined/{attempt}/{rank}", "1")
        return attempt
    waiting, deadline = set(range(1, world)), time.monotonic() + timeout.total_seconds()
    while waiting:
        for other in sorted(waiting):
            if store.check([f"mtft/joined/{me}/{other}"]):
                waiting.discard(other)
            elif store.check([f"mtft/joining/{other}"]):
                store.set(f"mtft/welcome/{store.get(f'mtft/joining/{other}').decode()}", me)
        if waiting and time.monotonic() > deadline:
            raise TimeoutError(f"ranks {sorted(waiting)} did not join within {timeout.total_seconds():g} s")
        time.sleep(0.02 if waiting else 0)
    return me


def kept_across_restarts(key: str, value: str) -> str:
    """`value` as the first attempt of this torchrun job set it, so a restarted group keeps it (e.g. the output
    directory, whose default holds the time it was resolved: a restart would otherwise start a new run). Each use
    of a key in a process is its own entry (a sweep's jobs run one after another). Without torchrun's agent store,
    `value`."""
    if _agent_store is None:
        return value
    _key_uses[key] = use = _key_uses.get(key, 0) + 1
    return _agent_store.compare_set(f"mtft/first/{key}/{use}", "", value).decode()


_key_uses: dict[str, int] = {}


def several_ranks() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def collective_failure(err: BaseException) -> str | None:
    """What a failed collective means for the run, or None if `err` is not one: a peer that did not answer within
    the timeout (hung, or its machine unreachable), or one that is gone."""
    text = str(err)
    if "Timed out" in text or "timed out" in text or isinstance(err, getattr(dist, "DistStoreError", ())):
        return "a peer did not answer within the collective timeout: one rank is hung or unreachable"
    if "Connection closed by peer" in text or "Connection reset by peer" in text:
        return "a peer is gone: its process or its node was lost"
    return None


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
    """Rank 0 runs the block before the others (e.g. to fill a shared on-disk cache the others then read); they
    wait for it up to SOLO_WORK_ALLOWANCE."""
    several = dist.is_initialized() and dist.get_world_size() > 1
    if several and dist.get_rank() != 0:
        dist.barrier(group=_solo_group)  # SOLO_WORK_ALLOWANCE, not the collective timeout
    yield
    if several and dist.get_rank() == 0:
        dist.barrier(group=_solo_group)


# ZeRO-3 leaves each rank a shard of every parameter; DeepSpeed records the whole one's size and shape on it.


def full_numel(param: torch.Tensor) -> int:
    """A parameter's whole size, also where this rank holds only a ZeRO-3 shard of it."""
    return getattr(param, "ds_numel", param.numel())


def full_shape(param: torch.Tensor) -> torch.Size:
    return getattr(param, "ds_shape", param.shape)


def local_values(param: torch.Tensor) -> torch.Tensor:
    """The values this rank holds: its ZeRO-3 shard, or the whole parameter."""
    return getattr(param, "ds_tensor", param)
