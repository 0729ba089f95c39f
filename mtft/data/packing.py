"""Packing: several samples per row, each still exactly its own sequence.

Best-fit-decreasing places the longest samples first, each into the fullest row it still fits. Per token the
batch carries `position_ids` restarting at every sample, so attention stays inside a sample (transformers
derives a block-diagonal mask from them under sdpa/eager with no attention_mask and no cache, and cu_seqlens
under flash-attn varlen), and the task id, so tasks can share a row and each keeps an exact loss. A sample's
first label is masked: it would otherwise be predicted from the previous sample's last token.
"""

from __future__ import annotations

import bisect

import torch

from mtft.data.collate import PAD_TASK, round_up
from mtft.data.tasks import Sample
from mtft.data.tokenize import IGNORE


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sample indices per row; no row exceeds `capacity`."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, row index), kept sorted for the best-fit search
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        need = lengths[index]
        if need > capacity:
            raise ValueError(f"a sample of {need} tokens cannot fit a row of {capacity}")
        slot = bisect.bisect_left(free, (need, -1))
        if slot < len(free):
            space, row = free.pop(slot)
        else:
            space, row = capacity, len(rows)
            rows.append([])
        rows[row].append(index)
        if space - need > 0:
            bisect.insort(free, (space - need, row))
    return rows


def collate_packed(
    samples: list[Sample], max_seq_len: int, pad_token_id: int, multiple_of: int = 8
) -> dict[str, torch.Tensor]:
    rows = best_fit_decreasing([len(s.input_ids) for s in samples], max_seq_len)
    width = round_up(max(sum(len(samples[i].input_ids) for i in row) for row in rows), multiple_of)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    task_ids = torch.full((len(rows), width), PAD_TASK, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            sample, n = samples[i], len(samples[i].input_ids)
            input_ids[r, start : start + n] = torch.tensor(sample.input_ids)
            labels[r, start + 1 : start + n] = torch.tensor(sample.labels[1:])
            task_ids[r, start : start + n] = sample.task_id
            position_ids[r, start : start + n] = torch.arange(n)
            start += n
        position_ids[r, start:] = torch.arange(width - start)  # padding: a sequence of its own, never trained on
    return {"input_ids": input_ids, "labels": labels, "task_ids": task_ids, "position_ids": position_ids}
