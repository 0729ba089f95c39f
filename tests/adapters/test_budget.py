"""`at_lora_budget`: every adapter the benchmarks set beside LoRA trains LoRA's parameters within 5%, counted as
`requires_grad` parameters after injection into models with real shapes (SmolLM2-135M's and Qwen2.5-0.5B's, two
layers of each: the count per layer is what matters), and each config's own count (what the search uses) equals
what injecting it trains."""

from __future__ import annotations

import copy
import functools
import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from mtft.adapters import ADAPTERS, adapter_variants, baseline_adapter, compared_adapters, run_settings
from mtft.adapters.base import BUDGET_TOLERANCE, count_parameters, target_linears

ALPHA = 32.0
LAYERS = 2
ARCHITECTURES = {
    "smollm2-135m": (
        LlamaForCausalLM,
        LlamaConfig(
            hidden_size=576,
            intermediate_size=1536,
            num_attention_heads=9,
            num_key_value_heads=3,
            head_dim=64,
            tie_word_embeddings=True,
        ),
    ),
    "qwen2.5-0.5b": (  # its q, k, v biases are frozen: they count for no method
        Qwen2ForCausalLM,
        Qwen2Config(
            hidden_size=896,
            intermediate_size=4864,
            num_attention_heads=14,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        ),
    ),
}
# Σ (in + out) over one layer's seven Linears (q, k, v, o, gate, up, down), by hand. SmolLM2-135M's 30 layers at
# LoRA r16: 16 · 30 · 10,176 = 4,884,480, the trainable parameters PEFT reports for it.
LINEAR_SIDES = {
    "smollm2-135m": 2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536),
    "qwen2.5-0.5b": 2 * (896 + 896) + 2 * (896 + 128) + 3 * (896 + 4864),
}
RANKS = [16, 4]  # a usual budget and a tight one
LOW_RANK = [name for name, method in ADAPTERS.items() if not method.config.is_full_model]


@functools.cache
def base_model(architecture: str) -> torch.nn.Module:
    model_class, config = ARCHITECTURES[architecture]
    config = copy.deepcopy(config)
    config.num_hidden_layers, config.vocab_size = LAYERS, 64
    torch.manual_seed(0)
    return model_class(config)


def shapes(model: torch.nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for _, m in target_linears(model)]


def trained(architecture: str, cfg) -> int:
    """Parameters that require a gradient once `cfg` is injected into a fresh copy of the base model."""
    model = ADAPTERS[cfg.name].inject(copy.deepcopy(base_model(architecture)), cfg)
    return count_parameters(model)[0]


@functools.cache
def budget(architecture: str, rank: int) -> tuple[dict, list[str], int]:
    """(compared configs, warnings while choosing them, LoRA's trained parameters) at LoRA `rank`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        configs = compared_adapters(rank, ALPHA, base_model(architecture))
    return configs, [str(w.message) for w in caught], trained(architecture, configs[baseline_adapter()])


@pytest.mark.parametrize(
    "run",
    [run for run, (name, _) in adapter_variants(runs=True).items() if name in LOW_RANK],
)
def test_config_counts_what_injection_trains(run):
    """The count the budget search relies on, for the defaults and every declared variant (MoR1E's prior too)."""
    name, settings = adapter_variants(runs=True)[run]
    cfg = ADAPTERS[name].config(**settings)
    assert cfg.trainable_parameters(shapes(base_model("smollm2-135m"))) == trained("smollm2-135m", cfg)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("rank", RANKS)
def test_loras_count_is_rank_times_the_linears_sides(architecture, rank):
    assert budget(architecture, rank)[2] == rank * LAYERS * LINEAR_SIDES[architecture]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("name", LOW_RANK)
def test_at_lora_budget_trains_loras_parameters(name, rank, architecture):
    configs, reasons, lora = budget(architecture, rank)
    if name not in configs:
        said = [reason for reason in reasons if reason.startswith(f"{name}:")]
        assert said, f"{name} left out at LoRA r{rank} without a warning that says why"
        assert rank != 16, said[0]  # a usual budget: every method reaches it
        pytest.skip(said[0])
    count = trained(architecture, configs[name])
    assert abs(count - lora) <= BUDGET_TOLERANCE * lora, (configs[name], count, lora, f"{count / lora - 1:+.1%}")


@pytest.mark.parametrize("name", LOW_RANK)
def test_with_run_variants_the_budget_counts_them_too(name):
    """`compared_adapters(..., runs=True)`: each method as a run on real data sets it (MoR1E with its prior), still
    within the tolerance of LoRA r16 on SmolLM2's shapes; injected, it trains what the search counted."""
    model = base_model("smollm2-135m")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        configs = compared_adapters(16, ALPHA, model, runs=True)
    cfg = configs[name]
    assert all(getattr(cfg, key) == value for key, value in run_settings(type(cfg)).items())
    lora = trained("smollm2-135m", configs[baseline_adapter()])
    assert abs(trained("smollm2-135m", cfg) - lora) <= BUDGET_TOLERANCE * lora
