"""MoLoRA (adapters/molora.py): its layer against the plain formula, its gates' backward, its Switch loss, its
op budget, and its equivalence with LoRA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtft.adapters import ADAPTERS
from mtft.adapters.moe import top_k_mask
from mtft.adapters.molora import ExpertGates, MoLoRAConfig, MoLoRALinear
from tests.adapters.layers import assert_matches_reference, build, double, ops_beyond_lora, real_sum
from tests.adapters.test_experts import copy_lora_weights, logits, lora_reference, tiny

CONFIG = MoLoRAConfig(num_experts=4, expert_rank=3, top_k=2, aux_loss_coef=0.5)
OP_BUDGET = {torch.float32: 11, torch.bfloat16: 14}  # beyond PEFT LoRA's, per wrapped Linear (layers.ops_beyond_lora)


def reference(layer, cfg):
    """MoLoRA's forward in plain autograd: softmax top-k over experts, renormalised, and the Switch loss."""

    def forward(x, mask):
        probs = torch.softmax(F.linear(x, layer.router_weight).float(), dim=-1)
        chosen = top_k_mask(probs.detach(), cfg.top_k)
        gates = chosen * probs
        gates = (cfg.alpha / cfg.expert_rank * gates / gates.sum(-1, keepdim=True)).to(x.dtype)
        tokens = float(x[..., 0].numel()) if mask is None else mask.sum().float().clamp_min(1)
        fraction = real_sum(chosen, mask) / (tokens * cfg.top_k)
        aux = cfg.aux_loss_coef * cfg.num_experts * (fraction * real_sum(probs, mask) / tokens).sum()
        hidden = F.linear(x, layer.lora_A).unflatten(-1, (cfg.num_experts, cfg.expert_rank))
        update = F.linear((hidden * gates.unsqueeze(-1)).flatten(-2), layer.lora_B)
        return layer.base(x) + update, real_sum(chosen, mask), aux

    return forward


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_layer_equals_the_autograd_reference(padded):
    layer = build(MoLoRALinear, CONFIG)
    assert_matches_reference(layer, reference(layer, CONFIG), padded)


def test_gradcheck_of_the_expert_gates():
    torch.manual_seed(0)
    expansion = torch.eye(3, dtype=torch.float64).repeat_interleave(2, dim=0)

    def expert_gates(h, z):
        gated, probs, _ = ExpertGates.apply(h, z, expansion, 2)
        return gated, probs

    assert torch.autograd.gradcheck(expert_gates, (double(2, 3, 6), double(2, 3, 3)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_ops_of_a_wrapped_layer_within_budget(dtype):
    assert ops_beyond_lora(build(MoLoRALinear, CONFIG), dtype) <= OP_BUDGET[dtype]


def test_one_expert_is_lora():
    reference = lora_reference(rank=4, alpha=8)
    cfg = MoLoRAConfig(num_experts=1, expert_rank=4, top_k=1, alpha=8)
    model = ADAPTERS["molora"].inject(tiny(), cfg).eval()
    copy_lora_weights(reference, model)
    torch.testing.assert_close(logits(model), logits(reference), atol=1e-5, rtol=0)


def test_aux_loss_is_switch_loss():
    layer = MoLoRALinear(torch.nn.Linear(4, 4), MoLoRAConfig(num_experts=2, expert_rank=1, top_k=1, aux_loss_coef=1.0))
    layer.router_weight.data = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    x = torch.tensor([[2.0, 0, 0, 0], [2.0, 0, 0, 0], [0, 2.0, 0, 0], [2.0, 0, 0, 0]])
    layer.train()(x)
    p_high = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    probs = torch.stack([p_high, p_high, p_high.flip(0), p_high])
    routed = torch.tensor([0.75, 0.25])  # 3 of 4 tokens chose expert 0
    expected = 2 * (routed * probs.mean(0)).sum()
    assert float(layer.aux_loss) == pytest.approx(float(expected))
