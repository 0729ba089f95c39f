"""adapters/moe.py serves every mixture of experts and knows none of them by name: state that one method's layers
share (MoR1E's intuition prior) is the adapter's by its type, `SharedLayerState`, and is saved and loaded with the
layers under whatever name the method attaches it."""

from __future__ import annotations

from pathlib import Path

import torch

from mtft.adapters import molora
from mtft.adapters.base import write_adapter_config
from mtft.adapters.moe import SharedLayerState, adapter_state, load_experts, save_experts
from mtft.models import TinyModelConfig, build_byte_tokenizer, build_tiny_model
from tests.helpers import adapter_names

MOE = Path(molora.__file__).with_name("moe.py")


class Tally(SharedLayerState):
    def __init__(self):
        super().__init__()
        self.register_buffer("value", torch.zeros(2))


def inject_with_tally(model, cfg):
    model = molora.inject(model, cfg)
    model.add_module("any_name", Tally())
    return model


def test_the_shared_layer_names_no_method():
    text = MOE.read_text().lower()
    mixtures = adapter_names("moe")
    assert mixtures and [name for name in mixtures if name in text] == []


def test_shared_layer_state_is_saved_and_loaded_under_any_name(tmp_path):
    cfg = molora.MoLoRAConfig()
    model = inject_with_tally(build_tiny_model(TinyModelConfig(), build_byte_tokenizer()), cfg)
    model.any_name.value.fill_(3.0)
    assert torch.equal(adapter_state(model)["any_name.value"], torch.full((2,), 3.0))
    save_experts(model, tmp_path)
    write_adapter_config(cfg, tmp_path)
    fresh = build_tiny_model(TinyModelConfig(), build_byte_tokenizer())
    loaded = load_experts(fresh, tmp_path, config_class=molora.MoLoRAConfig, inject=inject_with_tally)
    assert torch.equal(loaded.any_name.value, torch.full((2,), 3.0))
