"""Samples to a padded batch. The task id travels per token, so a row may hold several tasks once packed."""

from __future__ import annotations

import torch

from mtft.data.tasks import Sample
from mtft.data.tokenize import IGNORE

PAD_TASK = -1


def collate(samples: list[Sample], pad_token_id: int, multiple_of: int = 8) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sample, rounded up to `multiple_of` (friendlier kernels, fewer shapes)."""
    length = round_up(max(len(s.input_ids) for s in samples), multiple_of)
    input_ids = torch.full((len(samples), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(samples), length), IGNORE, dtype=torch.long)
    task_ids = torch.full((len(samples), length), PAD_TASK, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample.input_ids)
        input_ids[row, :n] = torch.tensor(sample.input_ids)
        labels[row, :n] = torch.tensor(sample.labels)
        task_ids[row, :n] = sample.task_id
        attention_mask[row, :n] = 1
    batch = {"input_ids": input_ids, "labels": labels, "task_ids": task_ids, "attention_mask": attention_mask}
    return add_instance_prior(batch, [[(s, 0)] for s in samples])


def add_instance_prior(
    batch: dict[str, torch.Tensor], rows: list[list[tuple[Sample, int]]]
) -> dict[str, torch.Tensor]:
    """Each sample's routing prior on each of its tokens (rows list (sample, start)); absent when no sample has one."""
    first = rows[0][0][0].prior
    if first is None:
        return batch
    prior = torch.zeros(*batch["input_ids"].shape, len(first))
    for r, row in enumerate(rows):
        for sample, start in row:
            prior[r, start : start + len(sample.input_ids)] = torch.tensor(sample.prior)
    return {**batch, "instance_prior": prior}


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")  # the instance prior goes to the adapter instead


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the model is called with: a padded batch has an attention mask, a packed one position ids."""
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int((batch["task_ids"] != PAD_TASK).sum())


def count_samples(batch: dict[str, torch.Tensor]) -> int:
    """Samples in a batch: each starts at position 0 when packed; one per row with any real token otherwise."""
    return int(sample_starts(batch).sum())


def task_samples(batch: dict[str, torch.Tensor], num_tasks: int) -> torch.Tensor:
    """Samples in a batch per task (int64, task order)."""
    starts = sample_starts(batch)
    return torch.bincount(batch["task_ids"][starts], minlength=num_tasks)


def sample_starts(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Where each sample begins (bool, the batch's shape): position 0 when packed, else each row's first token."""
    real = batch["task_ids"] != PAD_TASK
    if "position_ids" in batch:
        return (batch["position_ids"] == 0) & real
    first = torch.zeros_like(real)
    first[:, 0] = real[:, 0]  # right-padded: a row's sample starts at its first column
    return first
