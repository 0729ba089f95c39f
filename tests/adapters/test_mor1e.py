"""MoR1E (adapters/mor1e.py): its layer against the plain formula (top-k, dense, with the intuition prior), its
gates' backward, its op budgets, and its equivalence with LoRA. The prior itself: test_intuition.py."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from mtft.adapters import ADAPTERS, load_adapter, save_adapter
from mtft.adapters.intuition import IntuitionPrior
from mtft.adapters.moe import ADAPTER_WEIGHTS, expert_layers, top_k_mask
from mtft.adapters.mor1e import MoR1EConfig, MoR1ELinear, PairGates
from tests.adapters.layers import (
    IN,
    assert_matches_reference,
    assert_trains_with_bf16_parameters,
    build,
    double,
    ops_beyond_lora,
    real_sum,
)
from tests.adapters.test_experts import copy_lora_weights, logits, lora_reference, tiny

CONFIGS = {
    "top_k": MoR1EConfig(num_down=3, num_up=4, top_k=5, alpha=5.0),
    "dense": MoR1EConfig(num_down=3, num_up=4, top_k=0, alpha=5.0),
    "prior": MoR1EConfig(num_down=3, num_up=4, top_k=5, intuition_clusters=3),
}
# beyond PEFT LoRA's, per wrapped Linear (layers.ops_beyond_lora)
OP_BUDGET = {
    torch.float32: {"top_k": 6, "dense": 1, "prior": 17},
    torch.bfloat16: {"top_k": 9, "dense": 4, "prior": 20},
}


def build_mor1e(cfg: MoR1EConfig) -> MoR1ELinear:
    """The layer, and with `intuition_clusters` a prior of random cluster affinities for a (3, 7) batch."""
    if not cfg.intuition_clusters:
        return build(MoR1ELinear, cfg)
    torch.manual_seed(0)
    prior = IntuitionPrior(cfg.intuition_clusters, IN, -1)
    prior.current = torch.softmax(torch.randn(3, 7, cfg.intuition_clusters) * 2, -1)
    layer = build(MoR1ELinear, cfg, prior)
    with torch.no_grad():
        layer.prior_mix.fill_(0.4)
    return layer


def reference(layer, cfg):
    """MoR1E's forward in plain autograd: softmax over the r1·r2 pairs (blended with the prior's router), top-k
    or dense, scaled so k pairs carry α, mixing A's rows into B's columns."""

    def forward(x, mask):
        logits = F.linear(x, layer.router_weight)
        if cfg.intuition_clusters:
            mix = torch.sigmoid(layer.prior_mix)
            logits = (1 - mix) * logits + mix * layer.prior_router(layer.prior_source[0].current.to(x.dtype))
        probs = torch.softmax(logits.float(), dim=-1)
        k_eff = cfg.top_k or min(cfg.num_down, cfg.num_up)
        if cfg.top_k:
            chosen = top_k_mask(probs.detach(), cfg.top_k)
            gates = chosen * probs
            gates = k_eff * gates / gates.sum(-1, keepdim=True)
        else:
            chosen, gates = probs.detach(), k_eff * probs
        gates = (cfg.alpha / k_eff * gates).to(x.dtype).unflatten(-1, (cfg.num_down, cfg.num_up))
        mixed = torch.einsum("...ij,...i->...j", gates, F.linear(x, layer.lora_A))
        return layer.base(x) + F.linear(mixed, layer.lora_B), real_sum(chosen, mask), None

    return forward


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("case", list(CONFIGS))
def test_layer_equals_the_autograd_reference(case, padded):
    layer = build_mor1e(CONFIGS[case])
    assert_matches_reference(layer, reference(layer, CONFIGS[case]), padded)


def test_trains_with_bf16_parameters_and_the_prior():
    assert_trains_with_bf16_parameters(build_mor1e(CONFIGS["prior"]))


@pytest.mark.parametrize("k", [0, 4])
def test_gradcheck_of_the_pair_gates(k):
    torch.manual_seed(0)
    pair_gates = lambda h, z: PairGates.apply(h, z, (2, 3), k)[0]  # noqa: E731
    assert torch.autograd.gradcheck(pair_gates, (double(2, 2), double(2, 6)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CONFIGS))
def test_ops_of_a_wrapped_layer_within_budget(case, dtype):
    assert ops_beyond_lora(build_mor1e(CONFIGS[case]), dtype) <= OP_BUDGET[dtype][case]


def test_a_diagonal_gate_matrix_is_lora():
    reference = lora_reference(rank=4, alpha=8)
    model = ADAPTERS["mor1e"].inject(tiny(), MoR1EConfig(num_down=4, num_up=4, top_k=4, alpha=8)).eval()
    copy_lora_weights(reference, model)
    diagonal = torch.where(torch.eye(4, dtype=torch.bool), 0.0, -1e4).flatten()  # top-4 pairs: i = j, p = 1/4 each
    for layer in expert_layers(model).values():
        layer.routing_logits = lambda logits: diagonal.expand_as(logits)  # α·Gᵀ with G = I/4: (α/4)·B·A, LoRA
    torch.testing.assert_close(logits(model), logits(reference), atol=1e-5, rtol=0)


def test_an_adapter_saved_with_the_legacy_router_key_loads(tmp_path):
    """Checkpoints saved while the routers were nn.Linear children hold `router.weight`, beside the prior's."""
    model = ADAPTERS["mor1e"].inject(tiny(), MoR1EConfig(intuition_clusters=2))
    save_adapter(model, MoR1EConfig(intuition_clusters=2), tmp_path)
    saved = safetensors.torch.load_file(tmp_path / ADAPTER_WEIGHTS)
    legacy = {key.replace(".router_weight", ".router.weight"): value for key, value in saved.items()}
    assert len([key for key in legacy if key.endswith(".router.weight")]) == 14
    safetensors.torch.save_file(legacy, tmp_path / ADAPTER_WEIGHTS)
    loaded = load_adapter(tiny(), tmp_path)
    for name, layer in expert_layers(loaded).items():
        torch.testing.assert_close(layer.router_weight, saved[f"{name}.router_weight"], atol=0, rtol=0)
        torch.testing.assert_close(layer.prior_router.weight, saved[f"{name}.prior_router.weight"], atol=0, rtol=0)
