"""Every mixture-of-LoRA-experts adapter: initialisation, gradients of unused experts, router statistics, bf16. Each
method's own equivalences and balancing: test_<method>.py."""

from __future__ import annotations

from dataclasses import fields

import peft
import pytest
import torch

from mtft.adapters import ADAPTERS
from mtft.adapters.moe import ExpertLinear, after_optimizer_step, expert_layers, router_metrics, set_token_mask
from mtft.models import TinyModelConfig, build_byte_tokenizer, build_tiny_model
from tests.helpers import adapter_cases, adapter_names

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


@pytest.mark.parametrize(
    "name", [n for n in adapter_names("moe") if "top_k" in {f.name for f in fields(ADAPTERS[n].config)}]
)
def test_every_adapter_parameter_is_in_the_graph_even_for_unused_experts(name):
    """One token, top-1: most experts get nothing, yet every parameter has a gradient (zeros), so ZeRO-3's
    collectives see the same parameters on every rank whatever the routing."""
    layer = layer_class(name)(torch.nn.Linear(8, 8), ADAPTERS[name].config(top_k=1))
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
