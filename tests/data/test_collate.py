"""mtft.data.collate: right padding to a multiple of 8, with ignore labels, pad task ids and a zero mask."""

from __future__ import annotations

import pytest
import torch

from mtft.data.collate import PAD_TASK, collate
from mtft.data.tasks import Sample
from mtft.data.tokenize import IGNORE

PAD = 99


def sample(length: int, task_id: int, start: int = 1) -> Sample:
    ids = list(range(start, start + length))
    labels = [IGNORE] * (length // 2) + ids[length // 2 :]  # a prompt half and an answer half
    return Sample(ids, labels, task_id)


@pytest.mark.parametrize(
    ("lengths", "padded"), [([3, 10, 5], 16), ([8], 8), ([1], 8), ([8, 7], 8), ([9, 2], 16), ([17], 24), ([24], 24)]
)
def test_padding_length_is_longest_rounded_up_to_8(lengths, padded):
    batch = collate([sample(n, 0) for n in lengths], PAD)
    for name in ("input_ids", "labels", "task_ids", "attention_mask"):
        assert batch[name].shape == (len(lengths), padded), name
        assert batch[name].dtype == torch.long, name


def test_other_multiple():
    assert collate([sample(10, 0)], PAD, multiple_of=4)["input_ids"].shape == (1, 12)
    assert collate([sample(10, 0)], PAD, multiple_of=1)["input_ids"].shape == (1, 10)


def test_padding_values_and_contents():
    samples = [sample(3, 2, start=10), sample(10, 0, start=20), sample(5, 1, start=40)]
    batch = collate(samples, PAD)
    assert set(batch) == {"input_ids", "labels", "task_ids", "attention_mask"}
    assert batch["input_ids"].tolist() == [
        [10, 11, 12] + [PAD] * 13,
        list(range(20, 30)) + [PAD] * 6,
        list(range(40, 45)) + [PAD] * 11,
    ]
    assert batch["labels"].tolist() == [
        [-100, 11, 12] + [-100] * 13,
        [-100] * 5 + list(range(25, 30)) + [-100] * 6,
        [-100, -100, 42, 43, 44] + [-100] * 11,
    ]
    assert batch["task_ids"].tolist() == [[2] * 3 + [-1] * 13, [0] * 10 + [-1] * 6, [1] * 5 + [-1] * 11]
    assert batch["attention_mask"].tolist() == [[1] * 3 + [0] * 13, [1] * 10 + [0] * 6, [1] * 5 + [0] * 11]
    assert PAD_TASK == -1 and IGNORE == -100


def test_pad_id_appears_only_in_padding_even_if_zero():
    batch = collate([sample(2, 3, start=5), sample(9, 3, start=5)], pad_token_id=0)
    mask = batch["attention_mask"].bool()
    assert (batch["input_ids"][~mask] == 0).all()
    assert (batch["input_ids"][mask] != 0).all()
    assert (batch["labels"][~mask] == IGNORE).all()
    assert (batch["task_ids"][~mask] == PAD_TASK).all()
    assert (batch["task_ids"][mask] == 3).all()
    assert mask.sum(dim=1).tolist() == [2, 9]


def test_sample_objects_are_not_modified():
    samples = [sample(3, 0), sample(5, 1)]
    before = [(list(s.input_ids), list(s.labels), s.task_id) for s in samples]
    collate(samples, PAD)
    assert [(s.input_ids, s.labels, s.task_id) for s in samples] == before
