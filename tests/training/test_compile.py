"""trainer.compile: the compiled decoder layers train exactly as the eager ones (CPU inductor, fp32)."""

from __future__ import annotations

import pytest
import torch

from mtft.adapters import ADAPTERS
from mtft.adapters.moe import ExpertsRuntime
from mtft.models import TinyModelConfig, build_byte_tokenizer, build_tiny_model, compile_blocks
from mtft.training.losses import token_losses

IDS = torch.randint(0, 250, (2, 24), generator=torch.Generator().manual_seed(0))
TASK_IDS = torch.tensor([[0] * 24, [1] * 20 + [-1] * 4])


def _train(name: str, compiled: bool, steps: int = 3):
    torch.manual_seed(0)
    model = build_tiny_model(TinyModelConfig(num_layers=2), build_byte_tokenizer())
    cfg = ADAPTERS[name].config()
    model = ADAPTERS[name].inject(model, cfg).train()
    runtime = ADAPTERS[name].runtime(model, cfg)
    if compiled:
        assert compile_blocks(model) == 2
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses, loads = [], []
    for _ in range(steps):
        runtime.before_forward({"task_ids": TASK_IDS})
        loss = token_losses(model(input_ids=IDS).logits, IDS).mean() + runtime.aux_loss()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if isinstance(runtime, ExpertsRuntime):  # what the routers recorded, before the step hands it on
            loads.append(torch.cat([layer.step_load for layer in runtime.modules]).clone())
        runtime.after_step(True)
        losses.append(loss.detach())
    return torch.stack(losses), loads


@pytest.mark.parametrize("name", ["smora"])  # a mixture: buffers written and attributes set inside the graph
def test_compiled_blocks_train_as_the_eager_ones(name):
    eager_losses, eager_loads = _train(name, compiled=False)
    compiled_losses, compiled_loads = _train(name, compiled=True)
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-5, atol=1e-5)
    assert len(compiled_loads) == len(eager_loads)
    for got, want in zip(compiled_loads, eager_loads, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("name", [n for n, method in ADAPTERS.items() if not method.config.is_full_model])
def test_a_decoder_block_compiles_without_a_graph_break(name):
    """Issue 19: under trainer.compile each decoder block is one graph, whatever the adapter (dynamo's explain:
    what it would compile, and where it would break)."""
    torch.manual_seed(0)
    model = build_tiny_model(TinyModelConfig(num_layers=1), build_byte_tokenizer())
    cfg = ADAPTERS[name].config()
    model = ADAPTERS[name].inject(model, cfg).train()
    ADAPTERS[name].runtime(model, cfg).before_forward({"task_ids": TASK_IDS})
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT's wrapper, or the model
    block = base.model.layers[0]
    hidden = torch.randn(2, 24, base.config.hidden_size, requires_grad=True)
    position_ids = torch.arange(24).expand(2, 24)
    position_embeddings = base.model.rotary_emb(hidden, position_ids)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(block)(
        hidden, attention_mask=None, position_ids=position_ids, position_embeddings=position_embeddings
    )
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1
