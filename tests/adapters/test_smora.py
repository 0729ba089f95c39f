"""SMoRA (adapters/smora.py): its layer against the plain formula, its gates' backward, its op budget, its
equivalence with LoRA, and its bias balancing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtft.adapters import ADAPTERS
from mtft.adapters.moe import after_optimizer_step, expert_layers, top_k_mask
from mtft.adapters.smora import RankGates, SMoRAConfig, SMoRALinear
from tests.adapters.layers import (
    IN,
    OUT,
    assert_equal_to_float_precision,
    assert_matches_reference,
    build,
    double,
    new_forward,
    ops_beyond_lora,
    outputs_and_grads,
    real_sum,
)
from tests.adapters.test_experts import copy_lora_weights, logits, lora_reference, tiny

CONFIG = SMoRAConfig(rank=8, top_k=3, alpha=6.0)
OP_BUDGET = {torch.float32: 12, torch.bfloat16: 13}  # beyond PEFT LoRA's, per wrapped Linear (layers.ops_beyond_lora)


def reference(layer, cfg):
    """SMoRA's forward in plain autograd: top-k of sigmoid scores (+ the balancing bias), normalised, times α."""

    def forward(x, mask):
        scores = torch.sigmoid(F.linear(x, layer.router_weight))
        active = top_k_mask(scores.detach().float() + layer.rank_bias, cfg.top_k).to(scores.dtype)
        gates = active * scores
        gates = cfg.alpha * gates / gates.sum(-1, keepdim=True).clamp_min(1e-9)
        update = F.linear(gates * F.linear(x, layer.lora_A), layer.lora_B)
        return layer.base(x) + update, real_sum(active, mask), None

    return forward


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_layer_equals_the_autograd_reference(padded):
    layer = build(SMoRALinear, CONFIG)
    assert_matches_reference(layer, reference(layer, CONFIG), padded)


def test_backward_where_the_floor_holds():
    """Every active score underflows below the floor of Σ: the gradient of the floored quotient has no Σ term."""
    layer = build(SMoRALinear, CONFIG)
    with torch.no_grad():
        layer.router_weight.fill_(-4.0)
    x = torch.rand(2, 5, IN) + 0.5  # logits about -48: sigmoid about 1e-21
    weights = torch.randn(2, 5, OUT)
    got = outputs_and_grads(layer, new_forward(layer), x, weights)
    want = outputs_and_grads(layer, lambda x: reference(layer, CONFIG)(x, None), x, weights)
    for g, w in zip(got[3], want[3], strict=True):
        assert_equal_to_float_precision(g, w)


def test_gradcheck_of_the_rank_gates():
    torch.manual_seed(0)
    bias = torch.randn(6, dtype=torch.float64) * 0.1
    assert torch.autograd.gradcheck(
        lambda h, z: RankGates.apply(h, z, bias, 3, 2.5)[0], (double(2, 3, 6), double(2, 3, 6))
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_ops_of_a_wrapped_layer_within_budget(dtype):
    assert ops_beyond_lora(build(SMoRALinear, CONFIG), dtype) <= OP_BUDGET[dtype]


def test_all_ranks_and_equal_gates_is_lora():
    reference = lora_reference(rank=8, alpha=16)
    model = ADAPTERS["smora"].inject(tiny(), SMoRAConfig(rank=8, top_k=8, alpha=16, bias_update_rate=0)).eval()
    copy_lora_weights(reference, model)
    for layer in expert_layers(model).values():
        layer.router_weight.data.zero_()  # every score is sigmoid(0): equal gates
    torch.testing.assert_close(logits(model), logits(reference), atol=1e-5, rtol=0)
    assert (logits(model) - logits(tiny())).abs().max() > 1e-3


def coefficient_of_variation(load: torch.Tensor) -> float:
    return float(load.std(unbiased=False) / load.mean())


def test_bias_balancing_evens_out_a_skewed_router():
    torch.manual_seed(0)
    layer = SMoRALinear(torch.nn.Linear(16, 16), SMoRAConfig(rank=16, top_k=4, bias_update_rate=0.02)).train()
    with torch.no_grad():  # a router that prefers ranks 0-3 for every (positive) input
        layer.router_weight.normal_(std=0.1).add_(-0.5)
        layer.router_weight[:4] += 1.0

    def step_load() -> torch.Tensor:
        layer(torch.rand(64, 16))
        load = layer.step_load.clone()
        after_optimizer_step([layer])
        return load

    first = step_load()
    assert set(first.nonzero().flatten().tolist()) == {0, 1, 2, 3}
    for _ in range(150):
        step_load()
    late = sum(step_load() for _ in range(50))
    assert coefficient_of_variation(first) > 1.5
    assert coefficient_of_variation(late) < 0.35  # measured about 0.25 (from 1.7)
    assert layer.rank_bias[:4].max() < layer.rank_bias[4:].min()  # the favoured ranks were pushed down

    frozen = SMoRALinear(torch.nn.Linear(16, 16), SMoRAConfig(rank=16, top_k=4, bias_update_rate=0)).train()
    frozen.router_weight.data.copy_(layer.router_weight)
    frozen(torch.rand(64, 16))
    after_optimizer_step([frozen])
    assert frozen.rank_bias.abs().sum() == 0  # rate 0: balancing off


def test_the_bias_moves_by_the_rate_against_the_load():
    layers = [build(SMoRALinear, CONFIG), build(SMoRALinear, CONFIG)]
    for layer, load in zip(layers, ([1.0] * 8, [0.0] * 7 + [4]), strict=True):
        layer.step_load.copy_(torch.tensor(load))
    biases = [layer.rank_bias.clone() for layer in layers]
    after_optimizer_step(layers)
    torch.testing.assert_close(layers[0].rank_bias, biases[0])  # even loads: no bias moves
    moved = layers[1].rank_bias - biases[1]
    torch.testing.assert_close(moved, torch.tensor([1e-3] * 7 + [-1e-3]))  # SMoRA's default rate
