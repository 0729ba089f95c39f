"""What each expert layer's own test checks with: its hand-written backward against autograd through the plain
formula (the same outputs, loads, auxiliary losses and gradients w.r.t. the input and every parameter, with
padding), and the aten ops one forward+backward dispatches beyond PEFT LoRA's."""

from __future__ import annotations

import peft
import torch
from torch.profiler import ProfilerActivity, profile

from mtft.adapters.moe import ExpertLinear, set_token_mask

IN, OUT = 12, 10


def real_sum(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-expert sums over the real tokens (the loads a layer records)."""
    if mask is not None:
        values = torch.where(mask.unsqueeze(-1), values, 0.0)
    return values.reshape(-1, values.shape[-1]).float().sum(0)


def build(layer_class: type[ExpertLinear], cfg, *extra) -> ExpertLinear:
    """The layer on an IN->OUT Linear, with a live update (B starts at zero) and biases away from zero."""
    torch.manual_seed(0)
    layer = layer_class(torch.nn.Linear(IN, OUT), cfg, *extra)
    layer.base.requires_grad_(False)
    with torch.no_grad():
        layer.lora_B.normal_(std=0.3)
        for name, buffer in layer.named_buffers():
            if name == "rank_bias":
                buffer.normal_(std=0.1)
    return layer.train()


def outputs_and_grads(layer, forward, x, weights):
    """Output, loads, aux loss and the gradients of Σ out·weights + aux w.r.t. x and every trainable parameter."""
    x = x.detach().clone().requires_grad_()
    out, loads, aux = forward(x)
    objective = (out * weights).sum() + (0 if aux is None else aux)
    params = [p for p in layer.parameters() if p.requires_grad]
    grads = torch.autograd.grad(objective, [x, *params])
    return out, loads, aux, grads


def assert_equal_to_float_precision(got, want, msg=None):
    """Within 1e-6 of the largest entry: fp32 sums in another order differ by about 1e-7 of it."""
    torch.testing.assert_close(got, want, atol=1e-6 * float(want.abs().max()), rtol=0, msg=msg)


def new_forward(layer):
    def forward(x):
        layer.step_load.zero_()
        out = layer(x)
        return out, layer.step_load.clone(), layer.aux_loss

    return forward


def assert_matches_reference(layer, reference, padded: bool) -> None:
    """`reference(x, mask)` -> (output, loads, aux loss or None), in plain autograd, equals the layer."""
    x = torch.randn(3, 7, IN)
    weights = torch.randn(3, 7, OUT)
    mask = (torch.arange(7) < torch.tensor([[7], [4], [0]])) if padded else None  # a row of padding only, too
    set_token_mask([layer], mask)
    got = outputs_and_grads(layer, new_forward(layer), x, weights)
    want = outputs_and_grads(layer, lambda x: reference(x, mask), x, weights)
    assert_equal_to_float_precision(got[0], want[0], "output")
    torch.testing.assert_close(got[1], want[1], atol=1e-6, rtol=0)
    if want[2] is not None:
        torch.testing.assert_close(got[2], want[2], atol=1e-6, rtol=0)
        assert want[2].item() > 0
    names = ["x", *(n for n, p in layer.named_parameters() if p.requires_grad)]
    for param_name, g, w in zip(names, got[3], want[3], strict=True):
        assert_equal_to_float_precision(g, w, param_name)
        assert w.abs().max() > 0, param_name  # every gradient is live, so the comparison means something


def assert_trains_with_bf16_parameters(layer) -> None:
    """DeepSpeed's bf16 engine casts the parameters, not the buffers (biases, loads, expansions stay fp32): a
    forward+backward gives finite, live bf16 gradients and fp32 loads."""
    for param in layer.parameters():
        param.data = param.data.to(torch.bfloat16)
    x = torch.randn(3, 7, IN, dtype=torch.bfloat16, requires_grad=True)
    set_token_mask([layer], torch.ones(3, 7, dtype=torch.bool))
    out = layer(x)
    assert out.dtype == torch.bfloat16
    (out.float().sum() + (0 if layer.aux_loss is None else layer.aux_loss)).backward()
    grads = [x.grad, *(p.grad for p in layer.parameters() if p.requires_grad)]
    assert all(g.dtype == torch.bfloat16 and torch.isfinite(g.float()).all() and g.abs().max() > 0 for g in grads)
    assert layer.step_load.dtype == torch.float32 and layer.step_load.sum() > 0


def double(*shape, positive=False):
    t = torch.rand(*shape, dtype=torch.float64) + 0.1 if positive else torch.randn(*shape, dtype=torch.float64)
    return t.requires_grad_()


# ---- what a wrapped layer dispatches -----------------------------------------------------------------------------


def top_level_ops(events) -> tuple[int, int]:
    """(aten ops not called from inside another aten op, host syncs) among profiler events."""
    ops = syncs = 0
    for event in events:
        if not event.name.startswith("aten::"):
            continue
        syncs += event.name == "aten::_local_scalar_dense"
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        ops += parent is None
    return ops, syncs


def count_forward_backward(layer, dtype, auxiliary=lambda: None) -> tuple[int, int]:
    """One forward+backward with parameters in `dtype` (buffers stay fp32, as under DeepSpeed's bf16 engine),
    profiled after a first one: what is built once per batch for all layers is built."""
    for param in layer.parameters():
        param.data = param.data.to(dtype)
    x = torch.randn(3, 7, IN, dtype=dtype, requires_grad=True)
    for _ in range(2):
        x.grad = None
        for param in layer.parameters():
            param.grad = None
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            roots = [layer(x).sum()]
            if auxiliary() is not None:
                roots.append(auxiliary())
            torch.autograd.backward(roots)
    return top_level_ops(prof.events())


def peft_lora_linear():
    torch.manual_seed(0)
    model = peft.get_peft_model(torch.nn.Sequential(torch.nn.Linear(IN, OUT)), peft.LoraConfig(target_modules=["0"]))
    return model.base_model.model[0].train()


def ops_beyond_lora(layer, dtype) -> int:
    """Top-level aten ops of a (padded) forward+backward of `layer` beyond a PEFT LoRA Linear's; neither syncs.
    Each method's test holds its budget (issue 19: a step of a mixture within 1.3x of LoRA's): the count today, so
    the test fails if an op creeps in."""
    lora_ops, lora_syncs = count_forward_backward(peft_lora_linear(), dtype)
    set_token_mask([layer], torch.arange(7) < torch.tensor([[7], [4], [0]]))
    ops, syncs = count_forward_backward(layer, dtype, lambda: layer.aux_loss)
    assert syncs == lora_syncs == 0
    return ops - lora_ops
