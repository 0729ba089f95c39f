"""Per-task loss math against hand computations, and the balanced reduction's gradients."""

from __future__ import annotations

import math

import pytest
import torch

from mtft.data.collate import collate
from mtft.data.tasks import Sample
from mtft.training.losses import balanced_loss, label_counts, per_task_sums, token_losses


def test_per_task_sums_match_a_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[-100, 1, 2, -100], [-100, 4, 0, 3]])
    task_ids = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]])
    sums, counts = per_task_sums(token_losses(logits, labels), labels, task_ids, num_tasks=3)

    def nll(row: int, pos: int) -> float:  # position `pos` predicts labels[row, pos + 1]
        target = int(labels[row, pos + 1])
        return math.log(sum(math.exp(float(x)) for x in logits[row, pos])) - float(logits[row, pos, target])

    expected_0 = nll(0, 0) + nll(0, 1)  # labels 1, 2 (the last -100 is skipped)
    expected_1 = nll(1, 0) + nll(1, 1) + nll(1, 2)
    assert counts.tolist() == [2.0, 3.0, 0.0]
    assert sums.tolist() == pytest.approx([expected_0, expected_1, 0.0], abs=1e-5)
    assert label_counts(labels, task_ids, 3).tolist() == [2.0, 3.0, 0.0]


def test_per_task_sums_follow_the_per_token_task_id():
    """Two tasks sharing one row (as packing will do) are separated token by token."""
    logits = torch.zeros(1, 5, 3)  # uniform: every counted token costs log(3)
    labels = torch.tensor([[-100, 1, 1, 2, 0]])
    task_ids = torch.tensor([[0, 0, 1, 1, 1]])
    sums, counts = per_task_sums(token_losses(logits, labels), labels, task_ids, num_tasks=2)
    assert counts.tolist() == [1.0, 3.0]
    assert sums.tolist() == pytest.approx([math.log(3), 3 * math.log(3)])


def test_balanced_loss_with_static_weights():
    sums = torch.tensor([3.0, 8.0, 0.0])
    counts = torch.tensor([1.0, 4.0, 0.0])  # L = [3, 2, absent]
    weights = torch.tensor([1.0, 3.0, 5.0])  # the absent task's weight must not enter the denominator
    assert balanced_loss(sums, counts, weights).item() == pytest.approx((1 * 3 + 3 * 2) / (1 + 3))
    assert balanced_loss(sums, counts, torch.ones(3)).item() == pytest.approx((3 + 2) / 2)


def test_balanced_loss_normalises_by_the_whole_step():
    """A micro-batch's share uses the step's token counts, so the shares add up to the step loss."""
    step_counts = torch.tensor([4.0, 2.0])
    part_a, part_b = torch.tensor([1.0, 3.0]), torch.tensor([5.0, 0.0])
    w = torch.tensor([1.0, 2.0])
    whole = balanced_loss(part_a + part_b, step_counts, w)
    assert (balanced_loss(part_a, step_counts, w) + balanced_loss(part_b, step_counts, w)).item() == pytest.approx(
        whole.item()
    )
    assert whole.item() == pytest.approx((1 * 6 / 4 + 2 * 3 / 2) / 3)


def test_all_zero_weights_give_zero_loss_and_gradient():
    sums = torch.tensor([2.0, 1.0], requires_grad=True)
    loss = balanced_loss(sums, torch.tensor([1.0, 1.0]), torch.zeros(2))
    loss.backward()
    assert loss.item() == 0.0 and sums.grad.abs().sum().item() == 0.0


def _lora_model():
    from mtft.adapters.lora import LoraConfig, inject
    from mtft.models import TinyModelConfig, build_byte_tokenizer, build_tiny_model

    tokenizer = build_byte_tokenizer()
    model = inject(build_tiny_model(TinyModelConfig(), tokenizer), LoraConfig(rank=4))
    # LoRA B starts at zero, so A gets no gradient at step 0; give B a value to make the test see every weight.
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    return model, tokenizer


def _grads(model, samples, weights, num_tasks=2):
    model.zero_grad()
    batch = collate(samples, pad_token_id=0)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    sums, counts = per_task_sums(token_losses(logits, batch["labels"]), batch["labels"], batch["task_ids"], num_tasks)
    balanced_loss(sums, counts, torch.tensor(weights)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_zero_weight_task_gets_no_gradient():
    model, tokenizer = _lora_model()

    def sample(text: str, task: int) -> Sample:
        ids = tokenizer(text)["input_ids"]
        return Sample(ids, [-100] * 3 + ids[3:], task)

    task0 = [sample("What is 12 + 30? 42", 0), sample("What is 7 + 5? 12", 0)]
    task1 = [sample("Review: great. positive", 1)]

    only_zero = _grads(model, task0, [0.0, 1.0])
    assert all(g.abs().max().item() == 0.0 for g in only_zero.values())

    mixed = _grads(model, task0 + task1, [0.0, 1.0])
    alone = _grads(model, task1, [1.0, 1.0])
    assert any(g.abs().max().item() > 0 for g in alone.values())
    for name, grad in mixed.items():
        torch.testing.assert_close(grad, alone[name], atol=1e-6, rtol=1e-5)
    # The same batch with the task weighted in does change the gradient: the weight is what removed it.
    weighted_in = _grads(model, task0 + task1, [1.0, 1.0])
    assert max((weighted_in[n] - alone[n]).abs().max().item() for n in alone) > 1e-4
