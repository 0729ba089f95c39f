"""Micro-batches for one data-parallel rank, from the task sampler; and validation batches per task."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from mtft.data.collate import collate
from mtft.data.packing import collate_packed
from mtft.data.sampler import TaskSampler
from mtft.data.tasks import TaskData


class MixedBatches:
    """Every rank draws the same global batch from an identically seeded sampler and keeps its own slice,
    so ranks see disjoint samples and the sampler state is the same on all of them."""

    def __init__(
        self,
        tasks: list[TaskData],
        probabilities: np.ndarray,
        micro_batch_size: int,
        pad_token_id: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        pack_to: int | None = None,
    ):
        """`pack_to`: pack each micro-batch's samples into rows of this many tokens (None pads one per row)."""
        self.tasks = tasks
        self.pack_to = pack_to
        self.sampler = TaskSampler([len(t.train) for t in tasks], probabilities, seed)
        self.micro_batch_size = micro_batch_size
        self.pad_token_id = pad_token_id
        self.rank, self.world_size = rank, world_size

    def next(self) -> dict[str, torch.Tensor]:
        drawn = self.sampler.draw(self.micro_batch_size * self.world_size)[self.rank :: self.world_size]
        samples = [self.tasks[t].train[i] for t, i in drawn]
        if self.pack_to:
            return collate_packed(samples, self.pack_to, self.pad_token_id)
        return collate(samples, self.pad_token_id)

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


def validation_batches(
    tasks: list[TaskData], batch_size: int, pad_token_id: int, rank: int = 0, world_size: int = 1
) -> Iterator[dict[str, torch.Tensor]]:
    """Each rank's share of every task's validation samples, in fixed order."""
    for task in tasks:
        mine = task.val[rank::world_size]
        for start in range(0, len(mine), batch_size):
            yield collate(mine[start : start + batch_size], pad_token_id)
