"""The chunked cross-entropy (trainer.cross_entropy=chunked) against the plain full-logits path, in fp32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtft.adapters import ADAPTERS
from mtft.adapters.lora import LoraConfig
from mtft.models import TinyModelConfig, build_byte_tokenizer, build_tiny_model
from mtft.training.cross_entropy import chunked_token_losses, linear_cross_entropy, output_head
from mtft.training.losses import next_token_targets, token_losses
from mtft.training.model_runner import PlainRunner


def _targets(n: int, vocab: int) -> torch.Tensor:
    targets = torch.randint(0, vocab, (n,))
    targets[::5] = -100  # ignored positions: loss 0, no gradient
    return targets


@pytest.mark.parametrize("chunk", [1, 7, 64])
@pytest.mark.parametrize("bias", [False, True])
def test_losses_and_every_gradient_match_the_full_logits(chunk, bias):
    torch.manual_seed(0)
    n, hidden, vocab = 37, 16, 50
    head = nn.Linear(hidden, vocab, bias=bias)
    h = torch.randn(n, hidden, requires_grad=True)
    targets = _targets(n, vocab)
    per_token = torch.rand(n)  # the balanced loss weighs each token by its task's weight and count

    plain = F.cross_entropy(head(h), targets, ignore_index=-100, reduction="none")  # what token_losses computes
    (plain * per_token).sum().backward()
    expected = [h.grad.clone()] + [p.grad.clone() for p in head.parameters()]
    h.grad = None
    head.zero_grad()

    chunked = linear_cross_entropy(h, head, targets, chunk=chunk)
    (chunked * per_token).sum().backward()
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-5)
    for got, want in zip([h.grad] + [p.grad for p in head.parameters()], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (chunked[targets == -100] == 0).all()


def test_a_frozen_head_gets_no_gradient_and_keeps_no_logits():
    torch.manual_seed(0)
    head = nn.Linear(8, 1000, bias=False).requires_grad_(False)
    h = torch.randn(64, 8, requires_grad=True)
    losses = linear_cross_entropy(h, head, _targets(64, 1000), chunk=16)
    saved = [t for t in losses.grad_fn.saved_tensors if t is not None]
    assert max(t.numel() for t in saved) < 64 * 1000  # nothing of logits' size survives the forward
    losses.sum().backward()
    assert head.weight.grad is None and h.grad is not None


def test_through_a_peft_model_matches_the_plain_loss_and_lora_gradients():
    torch.manual_seed(0)
    tokenizer = build_byte_tokenizer()
    model = build_tiny_model(TinyModelConfig(), tokenizer)
    model = ADAPTERS["lora"].inject(model, LoraConfig(rank=4))
    for name, p in model.named_parameters():  # LoRA's B starts at 0: give it values so its gradients mean something
        if "lora_B" in name:
            nn.init.normal_(p, std=0.02)
    ids = torch.randint(0, 250, (2, 24))
    labels = ids.clone()
    labels[:, :5] = -100
    inputs = {"input_ids": ids, "position_ids": torch.arange(24).repeat(2, 1)}

    plain = token_losses(model(**inputs).logits, labels)
    plain.sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    chunked = chunked_token_losses(PlainRunner.alone(model), inputs, next_token_targets(labels))
    chunked.sum().backward()
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-5)


def test_a_model_with_scaled_logits_is_refused():
    model = build_tiny_model(TinyModelConfig(), build_byte_tokenizer())
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        output_head(model)
