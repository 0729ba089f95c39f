"""Padding takes no part in routing: no gradient reaches a padding position, and appending padding changes
neither the auxiliary loss nor the expert loads (issue: MoLoRA's Switch loss once averaged over padding too)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mtft.adapters import ADAPTERS
from mtft.adapters.moe import aux_loss, expert_layers, set_token_mask
from mtft.data.tokenize import IGNORE
from tests.adapters.test_experts import tiny
from tests.helpers import adapter_cases

PAD = 0
AUX_COEF = 0.5  # a large auxiliary loss coefficient, for adapters that have one: any leak would be far above rounding


def has_aux_loss(name: str) -> bool:
    return "aux_loss_coef" in {f.name for f in dataclasses.fields(ADAPTERS[name].config)}


def adapted(name: str, settings: dict):
    method = ADAPTERS[name]
    model = method.inject(
        tiny(), method.config(**settings, **({"aux_loss_coef": AUX_COEF} if has_aux_loss(name) else {}))
    )
    model.train()
    torch.manual_seed(2)
    for layer in expert_layers(model).values():  # a live update path, so routing matters to the loss
        torch.nn.init.normal_(layer.lora_B, std=0.2)
    return model


def padded_batch() -> dict[str, torch.Tensor]:
    """Two right-padded rows: 12 and 7 real tokens."""
    input_ids = torch.tensor([list(range(60, 72)), list(range(80, 87)) + [PAD] * 5])
    real = input_ids != PAD
    return {"input_ids": input_ids, "attention_mask": real.long(), "real": real}


def packed_batch() -> dict[str, torch.Tensor]:
    """One packed row: samples of 5 and 4 tokens, then a 3-token padding tail (a sequence of its own)."""
    input_ids = torch.tensor([[60, 61, 62, 63, 64, 70, 71, 72, 73, PAD, PAD, PAD]])
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2]])
    return {"input_ids": input_ids, "position_ids": position_ids, "real": input_ids != PAD}


def loss_and_embeddings(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token loss on the real tokens plus the adapters' auxiliary losses, as the training step computes it."""
    embeddings = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_()
    set_token_mask(list(expert_layers(model).values()), batch["real"])
    inputs = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
    logits = model(inputs_embeds=embeddings, **inputs).logits
    labels = torch.where(batch["real"], batch["input_ids"], IGNORE)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE)
    return loss + aux_loss(list(expert_layers(model).values())), embeddings


@pytest.mark.parametrize("layout", [padded_batch, packed_batch], ids=["padded", "packed"])
@pytest.mark.parametrize(("name", "settings"), adapter_cases("moe"))
def test_no_gradient_reaches_a_padding_position(name, settings, layout):
    batch = layout()
    loss, embeddings = loss_and_embeddings(adapted(name, settings), batch)
    loss.backward()
    real = batch["real"]
    assert embeddings.grad[~real].abs().max() == 0  # exactly: not merely small
    assert embeddings.grad[real].abs().max() > 1e-6


@pytest.mark.parametrize(("name", "settings"), adapter_cases("moe"))
def test_appended_padding_changes_neither_aux_loss_nor_loads(name, settings):
    model = adapted(name, settings)
    layers = list(expert_layers(model).values())

    def aux_and_loads(input_ids: torch.Tensor) -> tuple[float, torch.Tensor]:
        for layer in layers:
            layer.step_load.zero_()
        real = input_ids != PAD
        set_token_mask(layers, real)
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=real.long())
        return float(aux_loss(layers)), torch.stack([layer.step_load.clone() for layer in layers])

    short = padded_batch()["input_ids"]
    longer = torch.cat([short, torch.full((2, 9), PAD)], dim=1)  # more padding on every row
    extra_row = torch.cat([longer, torch.full((1, longer.shape[1]), PAD)])  # and a row of padding only
    aux, loads = aux_and_loads(short)
    for padded in (longer, extra_row):
        padded_aux, padded_loads = aux_and_loads(padded)
        assert padded_aux == pytest.approx(aux, rel=1e-6, abs=0)
        # top-k loads are token counts, where one padding token would add 1; dense routing's are sums of gate
        # mass, which longer rows sum in another order (a few 1e-7 apart)
        torch.testing.assert_close(padded_loads, loads, atol=1e-5, rtol=1e-5)
    if has_aux_loss(name):
        assert aux > 0  # the auxiliary loss is really computed
