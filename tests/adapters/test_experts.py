"""The mixture-of-LoRA-experts adapters: equivalences with LoRA, initialisation, balancing, gradients, stats."""

from __future__ import annotations

import peft
import pytest
import torch

from mtft.adapters import ADAPTERS
from mtft.adapters.moe import ExpertLinear, after_optimizer_step, expert_layers, router_metrics, set_token_mask
from mtft.adapters.molora import MoLoRAConfig, MoLoRALinear
from mtft.adapters.mor1e import MoR1EConfig, MoR1ELinear
from mtft.adapters.smora import SMoRAConfig, SMoRALinear
from mtft.models import TinyModelConfig, build_byte_tokenizer, build_tiny_model
from tests.helpers import adapter_cases

INPUT_IDS = torch.tensor([[5, 80, 81, 82, 99, 100, 40, 41], [7, 7, 90, 91, 92, 93, 94, 95]])


def tiny():
    torch.manual_seed(0)
    return build_tiny_model(TinyModelConfig(), build_byte_tokenizer()).eval()


def lora_reference(rank: int, alpha: float):
    """A PEFT LoRA on the same base, with random B so the comparison is not trivially zero."""
    model = peft.get_peft_model(tiny(), peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules="all-linear"))
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    return model.eval()


def copy_lora_weights(reference, model) -> None:
    """Put the PEFT model's A and B into the expert layers, matched by module path."""
    peft_modules = dict(reference.named_modules())
    for name, layer in expert_layers(model).items():
        source = peft_modules[f"base_model.model.{name}"]
        layer.lora_A.data.copy_(source.lora_A["default"].weight)
        layer.lora_B.data.copy_(source.lora_B["default"].weight)


def logits(model):
    with torch.no_grad():
        return model(input_ids=INPUT_IDS).logits


@pytest.mark.parametrize(("name", "settings"), adapter_cases("moe"))
def test_adapted_model_equals_the_base_at_initialisation(name, settings):
    base_logits = logits(tiny())
    model = ADAPTERS[name].inject(tiny(), ADAPTERS[name].config(**settings)).eval()
    assert len(expert_layers(model)) == 14  # all-linear: 7 per layer, never lm_head
    torch.testing.assert_close(logits(model), base_logits, atol=0, rtol=0)


def test_smora_with_all_ranks_and_equal_gates_is_lora():
    reference = lora_reference(rank=8, alpha=16)
    model = ADAPTERS["smora"].inject(tiny(), SMoRAConfig(rank=8, top_k=8, alpha=16, bias_update_rate=0)).eval()
    copy_lora_weights(reference, model)
    for layer in expert_layers(model).values():
        layer.router_weight.data.zero_()  # every score is sigmoid(0): equal gates
    torch.testing.assert_close(logits(model), logits(reference), atol=1e-5, rtol=0)
    assert (logits(model) - logits(tiny())).abs().max() > 1e-3


def test_molora_with_one_expert_is_lora():
    reference = lora_reference(rank=4, alpha=8)
    cfg = MoLoRAConfig(num_experts=1, expert_rank=4, top_k=1, alpha=8)
    model = ADAPTERS["molora"].inject(tiny(), cfg).eval()
    copy_lora_weights(reference, model)
    torch.testing.assert_close(logits(model), logits(reference), atol=1e-5, rtol=0)


def test_mor1e_with_a_diagonal_gate_matrix_is_lora():
    reference = lora_reference(rank=4, alpha=8)
    model = ADAPTERS["mor1e"].inject(tiny(), MoR1EConfig(num_down=4, num_up=4, top_k=4, alpha=8)).eval()
    copy_lora_weights(reference, model)
    diagonal = torch.where(torch.eye(4, dtype=torch.bool), 0.0, -1e4).flatten()  # top-4 pairs: i = j, p = 1/4 each
    for layer in expert_layers(model).values():
        layer.routing_logits = lambda logits: diagonal.expand_as(logits)  # α·Gᵀ with G = I/4: (α/4)·B·A, LoRA
    torch.testing.assert_close(logits(model), logits(reference), atol=1e-5, rtol=0)


def coefficient_of_variation(load: torch.Tensor) -> float:
    return float(load.std(unbiased=False) / load.mean())


def test_smora_bias_balancing_evens_out_a_skewed_router():
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


@pytest.mark.parametrize(
    "layer",
    [
        SMoRALinear(torch.nn.Linear(8, 8), SMoRAConfig(rank=8, top_k=1)),
        MoLoRALinear(torch.nn.Linear(8, 8), MoLoRAConfig(num_experts=8, expert_rank=2, top_k=1)),
        MoR1ELinear(torch.nn.Linear(8, 8), MoR1EConfig(num_down=4, num_up=4, top_k=1)),
    ],
    ids=["smora", "molora", "mor1e"],  # each with its own top-1 config: not a registry matrix
)
def test_every_adapter_parameter_is_in_the_graph_even_for_unused_experts(layer):
    """One token, top-1: most experts get nothing, yet every parameter has a gradient (zeros), so ZeRO-3's
    collectives see the same parameters on every rank whatever the routing."""
    layer.base.requires_grad_(False)
    torch.nn.init.normal_(layer.lora_B, std=0.1)
    layer.train()(torch.randn(1, 8)).sum().backward()
    grads = {n: p.grad for n, p in layer.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert int((layer.step_load > 0).sum()) == 1  # and indeed only one expert was used


def test_router_stats_by_hand():
    layer = ExpertLinear(torch.nn.Linear(2, 2), num_experts=4, dropout=0.0).train()
    layer.record_load(torch.tensor([[1.0, 0, 0, 0], [1.0, 1, 0, 0], [1.0, 0, 0, 0]]))
    assert router_metrics({"l": layer}) == {}  # counted once the step is applied
    after_optimizer_step([layer])
    metrics = router_metrics({"l": layer})
    assert metrics["router/l/load"] == [0.75, 0.25, 0.0, 0.0]
    expected = -(0.75 * torch.log(torch.tensor(0.75)) + 0.25 * torch.log(torch.tensor(0.25))) / torch.log(
        torch.tensor(4.0)
    )
    assert metrics["router/l/entropy"] == pytest.approx(float(expected))
    assert metrics["router/l/dead"] == 2 and metrics["router/dead_experts"] == 2
    assert router_metrics({"l": layer}) == {}  # the window was reset


def test_padding_counts_toward_no_expert_load():
    """Padding must not steer load balancing (SMoRA's biases) nor the router statistics."""
    layer = ExpertLinear(torch.nn.Linear(2, 2), num_experts=2, dropout=0.0).train()
    set_token_mask([layer], torch.tensor([[True, False]]))
    layer.record_load(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))  # the padding position chose expert 1
    set_token_mask([layer], None)
    assert layer.step_load.tolist() == [1.0, 0.0]


def test_molora_aux_loss_is_switch_loss():
    layer = MoLoRALinear(torch.nn.Linear(4, 4), MoLoRAConfig(num_experts=2, expert_rank=1, top_k=1, aux_loss_coef=1.0))
    layer.router_weight.data = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    x = torch.tensor([[2.0, 0, 0, 0], [2.0, 0, 0, 0], [0, 2.0, 0, 0], [2.0, 0, 0, 0]])
    layer.train()(x)
    p_high = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    probs = torch.stack([p_high, p_high, p_high.flip(0), p_high])
    routed = torch.tensor([0.75, 0.25])  # 3 of 4 tokens chose expert 0
    expected = 2 * (routed * probs.mean(0)).sum()
    assert float(layer.aux_loss) == pytest.approx(float(expected))


def layer_class(name: str) -> type[ExpertLinear]:
    """The expert layer adapter `name` injects (every one is built from a base Linear and its config)."""
    method = ADAPTERS[name]
    return type(next(iter(expert_layers(method.inject(tiny(), method.config())).values())))


@pytest.mark.parametrize(("name", "settings"), adapter_cases("moe"))
def test_bf16_forward_and_backward(name, settings):
    cfg = ADAPTERS[name].config(**settings)
    layer = layer_class(name)(torch.nn.Linear(16, 16), cfg)
    layer = layer.to(torch.bfloat16).train()
    layer.base.requires_grad_(False)
    torch.nn.init.normal_(layer.lora_B, std=0.1)
    out = layer(torch.randn(3, 5, 16, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    grads = [p.grad for p in layer.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.bfloat16 and torch.isfinite(g.float()).all() for g in grads)
