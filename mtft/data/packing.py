"""Packing: several samples per row, each still exactly its own sequence.

Rows are filled to a token budget: `rows` rows of `capacity` tokens take samples from the stream, each placed
best-fit (into the fullest row it still fits). A sample that fits nowhere is deferred to the next micro-batch,
where it goes first, so nothing is skipped; after `patience` misses in a row the micro-batch is closed.

Per token the batch carries `position_ids` restarting at every sample, so attention stays inside a sample
(transformers derives a block-diagonal mask from them under sdpa/eager with no attention_mask and no cache, and
cu_seqlens under flash-attn varlen), and the task id, so tasks can share a row and each keeps an exact loss. A
sample's first label is masked: it would otherwise be predicted from the previous sample's last token.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TypeVar

import torch

from mtft.data.collate import PAD_TASK, add_instance_prior, round_up
from mtft.data.tasks import Sample
from mtft.data.tokenize import IGNORE

Item = TypeVar("Item")


def pack_rows(
    pending: list[Item],
    take: Callable[[], Item],
    length: Callable[[Item], int],
    rows: int,
    capacity: int,
    patience: int = 8,
) -> tuple[list[list[Item]], list[Item]]:
    """Fill `rows` rows of `capacity` tokens from `pending`, then from `take()`. Returns (rows, new pending)."""
    free = [capacity] * rows
    placed: list[list[Item]] = [[] for _ in range(rows)]
    queue, deferred, misses = deque(pending), [], 0
    while misses < patience and max(free) > 0:
        item = queue.popleft() if queue else take()
        need = length(item)
        if need > capacity:
            raise ValueError(f"a sample of {need} tokens cannot fit a row of {capacity}")
        fitting = [r for r in range(rows) if free[r] >= need]
        if not fitting:
            deferred.append(item)
            misses += 1
            continue
        best = min(fitting, key=lambda r: free[r])
        placed[best].append(item)
        free[best] -= need
        misses = 0
    return [row for row in placed if row], deferred + list(queue)


def collate_rows(
    rows: list[list[Sample]], pad_token_id: int, multiple_of: int = 8, width: int | None = None
) -> dict[str, torch.Tensor]:
    """Packed rows to a batch: restarting position ids, per-token task ids, each sample's first label masked.
    `width`: every batch exactly this wide (the packing length), so shapes never change from step to step and a
    compiled model is never recompiled; else the longest row, rounded up to `multiple_of`."""
    width = width or round_up(max(sum(len(s.input_ids) for s in row) for row in rows), multiple_of)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    task_ids = torch.full((len(rows), width), PAD_TASK, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    starts: list[list[tuple[Sample, int]]] = []
    for r, row in enumerate(rows):
        start = 0
        starts.append([])
        for sample in row:
            starts[-1].append((sample, start))
            n = len(sample.input_ids)
            input_ids[r, start : start + n] = torch.tensor(sample.input_ids)
            labels[r, start + 1 : start + n] = torch.tensor(sample.labels[1:])
            task_ids[r, start : start + n] = sample.task_id
            position_ids[r, start : start + n] = torch.arange(n)
            start += n
        position_ids[r, start:] = torch.arange(width - start)  # padding: a sequence of its own, never trained on
    batch = {"input_ids": input_ids, "labels": labels, "task_ids": task_ids, "position_ids": position_ids}
    return add_instance_prior(batch, starts)
