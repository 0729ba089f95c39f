"""trainer.gradient_checkpointing: the same losses and gradients as without it, for every adapter, and a mixture's
routing statistics and auxiliary loss recorded once, not again when the backward reruns the forward."""

from __future__ import annotations

import pytest
import torch

from mtft.adapters import ADAPTERS
from mtft.adapters.moe import ExpertsRuntime
from mtft.models import TinyModelConfig, build_byte_tokenizer, build_tiny_model, enable_gradient_checkpointing
from mtft.training.losses import token_losses
from tests.helpers import adapter_cases

IDS = torch.randint(0, 250, (2, 32), generator=torch.Generator().manual_seed(0))
TASK_IDS = torch.tensor([[0] * 32, [1] * 28 + [-1] * 4])  # the last 4 positions of row 2 are padding


def _run(name: str, settings: dict, checkpointing: bool):
    torch.manual_seed(0)
    model = build_tiny_model(TinyModelConfig(), build_byte_tokenizer())
    cfg = ADAPTERS[name].config(**settings)
    model = ADAPTERS[name].inject(model, cfg).train()
    torch.manual_seed(1)
    with torch.no_grad():  # every trainable weight away from its initial value (LoRA's B starts at zero)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.02)
    runtime = ADAPTERS[name].runtime(model, cfg)
    if checkpointing:
        enable_gradient_checkpointing(model, runtime.recomputation)
    runtime.before_forward({"task_ids": TASK_IDS})
    losses = token_losses(model(input_ids=IDS).logits, IDS)
    loss = losses.mean() + runtime.aux_loss()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    loads = (
        {n: layer.step_load.clone() for n, layer in runtime.layers.items()}
        if isinstance(runtime, ExpertsRuntime)
        else {}
    )
    return losses.detach(), float(runtime.aux_loss()), grads, loads


@pytest.mark.parametrize(("name", "settings"), adapter_cases())
def test_checkpointing_gives_the_same_losses_gradients_and_routing_statistics(name, settings):
    plain = _run(name, settings, checkpointing=False)
    recomputed = _run(name, settings, checkpointing=True)
    torch.testing.assert_close(recomputed[0], plain[0], rtol=1e-5, atol=1e-5)
    assert recomputed[1] == pytest.approx(plain[1], rel=1e-5, abs=1e-7)
    assert recomputed[2].keys() == plain[2].keys() and plain[2]
    for key, grad in plain[2].items():
        torch.testing.assert_close(recomputed[2][key], grad, rtol=1e-5, atol=1e-5)
    assert recomputed[3].keys() == plain[3].keys()
    for key, load in plain[3].items():  # each token chose its experts once: no second count from the rerun
        torch.testing.assert_close(recomputed[3][key], load, rtol=1e-6, atol=1e-6)  # float for dense routing
        assert load.sum() > 0
