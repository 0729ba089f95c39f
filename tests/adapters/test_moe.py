"""What every mixture of experts shares (adapters/moe.py), for each registered one: its low-rank products'
backwards, checkpoints with the legacy router key, bf16 parameters over fp32 buffers, loads that reach their own
windows, and no host sync in a step or in the runtime's hooks. Each method's own math: test_<method>.py."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from mtft.adapters import ADAPTERS
from mtft.adapters.moe import LowRankIn, LowRankOut, after_optimizer_step, expert_layers, set_token_mask
from tests.adapters.layers import IN, assert_trains_with_bf16_parameters, build, double, top_level_ops
from tests.adapters.test_experts import layer_class, tiny
from tests.helpers import adapter_cases

MOE = adapter_cases("moe")


def layer_of(name: str, settings: dict):
    return build(layer_class(name), ADAPTERS[name].config(**settings))


def test_gradcheck_of_the_low_rank_products():
    torch.manual_seed(0)
    x = double(2, 3, 5)
    assert torch.autograd.gradcheck(lambda x, a, r: LowRankIn.apply(x, a, r), (x, double(4, 5), double(6, 5)))
    assert torch.autograd.gradcheck(LowRankOut.apply, (double(2, 3, 4), double(5, 4)))


@pytest.mark.parametrize(("name", "settings"), MOE)
def test_legacy_router_key_loads(name, settings):
    """Checkpoints saved while the router was an nn.Linear child hold `router.weight`."""
    layer = layer_of(name, settings)
    state = layer.state_dict()
    state["router.weight"] = state.pop("router_weight") * 2
    fresh = layer_of(name, settings)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.router_weight, layer.router_weight * 2)


@pytest.mark.parametrize(("name", "settings"), MOE)
def test_no_host_sync_in_a_step(name, settings):
    layers = [layer_of(name, settings) for _ in range(3)]
    set_token_mask(layers, torch.ones(3, 7, dtype=torch.bool))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for layer in layers:
            layer(torch.randn(3, 7, IN)).sum().backward()
        loads = [layer.step_load.clone() for layer in layers]
        set_token_mask(layers, None)
        after_optimizer_step(layers)
    names = [event.name for event in prof.events()]
    assert "aten::_local_scalar_dense" not in names
    assert any(name.startswith("aten::_foreach_add_") for name in names)  # the loads were applied
    for layer, load in zip(layers, loads, strict=True):
        assert load.sum() > 0
        torch.testing.assert_close(layer.window_load, load, atol=0, rtol=0)


def test_loads_of_layers_of_two_widths_reach_their_own_windows():
    """Every registered mixture's layer, twice, in one step: the loads are applied per width, each to its own."""
    layers = [layer_of(name, settings) for name, settings in (case.values for case in MOE) for _ in range(2)]
    assert len({layer.step_load.numel() for layer in layers}) > 1 or len(MOE) == 1
    loads = [torch.rand(layer.step_load.shape) for layer in layers]
    for layer, load in zip(layers, loads, strict=True):
        layer.step_load.copy_(load)
    after_optimizer_step(layers)
    for layer, load in zip(layers, loads, strict=True):
        torch.testing.assert_close(layer.window_load, load, atol=0, rtol=0)
        assert layer.step_load.sum() == 0


@pytest.mark.parametrize(("name", "settings"), MOE)
def test_bf16_parameters_with_fp32_buffers(name, settings):
    """DeepSpeed's bf16 engine casts the parameters, not the buffers (SMoRA's biases, the loads, MoLoRA's
    expansion stay fp32)."""
    assert_trains_with_bf16_parameters(layer_of(name, settings))


@pytest.mark.parametrize(("name", "settings"), MOE)
def test_no_host_sync_in_the_runtime_hooks(name, settings):
    cfg = ADAPTERS[name].config(**settings)
    model = ADAPTERS[name].inject(tiny(), cfg).train()
    runtime = ADAPTERS[name].runtime(model, cfg)
    input_ids = torch.randint(0, 200, (2, 9))
    task_ids = torch.tensor([[0] * 9, [1] * 5 + [-1] * 4])
    with profile(activities=[ProfilerActivity.CPU]) as before:
        runtime.before_forward({"task_ids": task_ids})
    logits = model(input_ids=input_ids).logits  # the layers' own syncs: each test_<method>.py's op budget
    with profile(activities=[ProfilerActivity.CPU]) as after:
        (logits.float().sum() + runtime.aux_loss()).backward()
        runtime.after_step(True)
    assert top_level_ops(before.events())[1] == top_level_ops(after.events())[1] == 0
    loads = [layer.window_load for layer in expert_layers(model).values()]
    assert all(load.sum() > 0 for load in loads)
