"""Micro-batches for one data-parallel rank, from the task sampler; and validation batches per task."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from mtft.data.collate import collate
from mtft.data.packing import collate_rows, pack_rows
from mtft.data.sampler import TaskSampler
from mtft.data.tasks import Sample, TaskData
from mtft.data.tokenize import IGNORE


class MixedBatches:
    """One rank's micro-batches. Every rank runs an identically seeded sampler; of each round of `world_size`
    draws, rank r takes the r-th. Ranks therefore see disjoint samples and, together, exactly the one-rank
    stream, even when packing makes them consume different numbers of samples per micro-batch.

    Padded: `micro_batch_size` samples, one per row. Packed (`pack_to` tokens per row): `micro_batch_size` rows
    filled from the stream; samples that did not fit wait in `pending` for the next micro-batch.
    """

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
        self.tasks = tasks
        self.sampler = TaskSampler([len(t.train) for t in tasks], probabilities, seed)
        self.micro_batch_size = micro_batch_size
        self.pad_token_id = pad_token_id
        self.rank, self.world_size = rank, world_size
        self.pack_to = pack_to
        self.pending: list[tuple[int, int]] = []  # (task, index) drawn but not yet placed

    @property
    def rounds(self) -> int:
        """Rounds of shared draws this rank has used up (ranks differ once packing has run)."""
        return self.sampler.rounds

    def follow(self, probabilities: np.ndarray, from_round: int) -> None:
        """Mix rounds `from_round` on by `probabilities` (TaskSampler.follow): every rank, the same call."""
        self.sampler.follow(probabilities, from_round)

    def _take(self) -> tuple[int, int]:
        return self.sampler.draw(self.world_size)[self.rank]

    def _sample(self, item: tuple[int, int]) -> Sample:
        return self.tasks[item[0]].train[item[1]]

    def _length(self, item: tuple[int, int]) -> int:
        return len(self._sample(item).input_ids)

    def next(self) -> dict[str, torch.Tensor]:
        if not self.pack_to:
            return collate([self._sample(self._take()) for _ in range(self.micro_batch_size)], self.pad_token_id)
        rows, self.pending = pack_rows(self.pending, self._take, self._length, self.micro_batch_size, self.pack_to)
        samples = [[self._sample(item) for item in row] for row in rows]
        return collate_rows(samples, self.pad_token_id, width=self.pack_to)

    def state_dict(self) -> dict[str, Any]:
        """This rank's position (ranks differ once packing has run)."""
        return {"sampler": self.sampler.state_dict(), "pending": [list(item) for item in self.pending]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.pending = [tuple(item) for item in state["pending"]]


def validation_batches(
    tasks: list[TaskData], batch_size: int, pad_token_id: int, rank: int = 0, world_size: int = 1
) -> Iterator[dict[str, torch.Tensor]]:
    """Each rank's share of every task's validation samples, in fixed order.

    Every rank yields the same number of batches, because under ZeRO-3 each forward is a collective: a rank
    whose share runs out first gets filler batches whose labels are all ignored, so they count for nothing.
    """
    for task in tasks:
        mine = task.val[rank::world_size]
        for start in range(0, validation_rounds(task, batch_size, world_size) * batch_size, batch_size):
            chunk = mine[start : start + batch_size]
            yield collate(chunk, pad_token_id) if chunk else _ignored(collate(task.val[:1], pad_token_id))


def validation_rounds(task: TaskData, batch_size: int, world_size: int) -> int:
    """Batches per rank for `task`'s validation split: rank 0's share is the largest."""
    return -(-len(task.val[0::world_size]) // batch_size)


def _ignored(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    batch["labels"].fill_(IGNORE)
    return batch


class ValidationCycle:
    """Validation micro-batches that mix the tasks and cycle forever: cheap, frequent per-task validation losses
    for balancers such as CoBa. A seeded order over every task's validation samples; each rank keeps its slice
    of every global batch; the position is a single integer, saved for exact resume."""

    def __init__(
        self, tasks: list[TaskData], batch_size: int, pad_token_id: int, seed: int, rank: int = 0, world_size: int = 1
    ):
        self.samples = [s for task in tasks for s in task.val]
        self.order = np.random.default_rng([seed, 7]).permutation(len(self.samples))
        self.global_batch = batch_size * world_size
        self.pad_token_id, self.rank, self.world_size = pad_token_id, rank, world_size
        self.cursor = 0

    def next(self) -> dict[str, torch.Tensor]:
        picked = [self.order[(self.cursor + i) % len(self.order)] for i in range(self.global_batch)]
        self.cursor = (self.cursor + self.global_batch) % len(self.order)
        return collate([self.samples[i] for i in picked[self.rank :: self.world_size]], self.pad_token_id)
