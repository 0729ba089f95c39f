"""Packing: best-fit-decreasing rows, restarting positions, and per-task losses equal to the unpacked batch."""

from __future__ import annotations

import pytest
import torch

from mtft.data.collate import collate, model_inputs, real_tokens
from mtft.data.packing import collate_rows, pack_rows
from mtft.data.synthetic import generate
from mtft.data.tasks import Sample
from mtft.data.tokenize import IGNORE, tokenize_messages
from mtft.models import TinyModelConfig, build_byte_tokenizer, build_tiny_model
from mtft.training.losses import per_task_sums, token_losses


def _stream(count: int, filler: int):
    """Items 0..count-1, then `filler` forever (the sampler never runs dry)."""
    items = iter(range(count))
    return lambda: next(items, filler)


def test_pack_rows_best_fit_with_deferral():
    lengths = [7, 5, 4, 3, 3, 2, 1, 1, 9, 6, 10]  # the last is the filler
    rows, pending = pack_rows([], _stream(10, 10), lengths.__getitem__, rows=3, capacity=10, patience=2)
    # 7 opens row 0; 5 opens row 1; 4 best-fits row 1 (5 free); 3 fills row 0; the next 3 opens row 2;
    # 2 joins row 2; 1 fills row 1; 1 joins row 2; 9 fits nowhere (miss 1), 6 neither (miss 2): closed.
    assert rows == [[0, 3], [1, 2, 6], [4, 5, 7]]
    assert pending == [8, 9]
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    # The deferred samples go first next time, so nothing is skipped.
    rows, pending = pack_rows(pending, _stream(0, 10), lengths.__getitem__, rows=2, capacity=10, patience=2)
    assert rows == [[8], [9]] and pending == [10, 10]


def test_pack_rows_refuses_an_oversized_sample():
    with pytest.raises(ValueError):
        pack_rows([0], _stream(0, 0), [11].__getitem__, rows=1, capacity=10)


def test_collate_rows_restarts_positions_and_masks_each_first_label():
    a, b, c = Sample([1, 2, 3], [-100, 2, 3], 0), Sample([4, 5], [4, 5], 1), Sample([6, 7, 8, 9], [6, 7, 8, 9], 2)
    batch = collate_rows([[c, b], [a]], pad_token_id=0, multiple_of=1)
    assert batch["input_ids"].tolist() == [[6, 7, 8, 9, 4, 5], [1, 2, 3, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 1, 2]]
    assert batch["task_ids"].tolist() == [[2, 2, 2, 2, 1, 1], [0, 0, 0, -1, -1, -1]]
    assert batch["labels"].tolist() == [[IGNORE, 7, 8, 9, IGNORE, 5], [IGNORE, 2, 3, IGNORE, IGNORE, IGNORE]]
    assert "attention_mask" not in batch and set(model_inputs(batch)) == {"input_ids", "position_ids"}
    assert real_tokens(batch) == 9


def _mixed_samples(tokenizer) -> list[Sample]:
    samples = []
    for task_id, name in enumerate(("add", "reverse", "sort", "sentiment")):
        for record in generate(name)[:4]:
            ids, labels = tokenize_messages(tokenizer, record["messages"])
            samples.append(Sample(ids, labels, task_id))
    return samples


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_per_task_losses_equal_unpacked(attn):
    tokenizer = build_byte_tokenizer()
    model = build_tiny_model(TinyModelConfig(), tokenizer).eval()
    model.set_attn_implementation(attn)
    assert model.config.use_cache is False  # a cache turns transformers' packed-sequence isolation off
    samples = _mixed_samples(tokenizer)

    def losses(batch):
        with torch.no_grad():
            logits = model(**model_inputs(batch)).logits
        return per_task_sums(token_losses(logits, batch["labels"]), batch["labels"], batch["task_ids"], 4)

    lengths = [len(x.input_ids) for x in samples] + [256]  # a full-row filler that closes the micro-batch
    rows, _ = pack_rows(list(range(len(samples))), _stream(0, len(samples)), lengths.__getitem__, 6, 256)
    rows = [[samples[i] for i in row if i < len(samples)] for row in rows]
    assert sorted(id(x) for row in rows for x in row) == sorted(id(x) for x in samples)  # all placed, once
    packed = collate_rows([row for row in rows if row], tokenizer.pad_token_id)
    padded = collate(samples, tokenizer.pad_token_id)
    assert packed["input_ids"].shape[0] < len(samples) / 2  # several tasks really share rows
    assert any(len(set(row.tolist()) - {-1}) > 1 for row in packed["task_ids"])
    packed_sums, packed_counts = losses(packed)
    padded_sums, padded_counts = losses(padded)
    assert packed_counts.tolist() == padded_counts.tolist()
    torch.testing.assert_close(packed_sums / packed_counts, padded_sums / padded_counts, atol=1e-5, rtol=0)

    # Guard: the same rows without restarting positions let samples see each other, and the losses move.
    leaky = {k: v for k, v in packed.items() if k != "position_ids"}
    leaky_sums, _ = losses(leaky)
    assert (leaky_sums / packed_counts - padded_sums / padded_counts).abs().max() > 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash-attn needs a CUDA device")
def test_packed_equals_unpacked_under_flash_attention():
    pytest.importorskip("flash_attn")
    tokenizer = build_byte_tokenizer()
    model = build_tiny_model(TinyModelConfig(), tokenizer).to("cuda", torch.bfloat16).eval()
    model.set_attn_implementation("flash_attention_2")
    samples = _mixed_samples(tokenizer)
    lengths = [len(x.input_ids) for x in samples] + [256]
    rows, _ = pack_rows(list(range(len(samples))), _stream(0, len(samples)), lengths.__getitem__, 6, 256)
    packed = collate_rows([[samples[i] for i in row if i < len(samples)] for row in rows if row != [len(samples)]], 0)

    def losses(batch):
        batch = {k: v.cuda() for k, v in batch.items()}
        with torch.no_grad():
            logits = model(**model_inputs(batch)).logits
        sums, counts = per_task_sums(token_losses(logits, batch["labels"]), batch["labels"], batch["task_ids"], 4)
        return sums / counts

    # flash-attn has no padding mask here, so compare with each sample run alone (one row, no padding).
    alone = torch.zeros(4, device="cuda")
    counts = torch.zeros(4, device="cuda")
    for sample in samples:
        batch = {k: v.cuda() for k, v in collate([sample], 0, multiple_of=1).items()}
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"]).logits
        s, c = per_task_sums(token_losses(logits, batch["labels"]), batch["labels"], batch["task_ids"], 4)
        alone, counts = alone + s, counts + c
    torch.testing.assert_close(losses(packed), alone / counts, atol=2e-2, rtol=0)  # bf16
