"""The MFU estimate: model FLOPs by hand for a tiny model, the formula's terms, the peak lookup."""

from __future__ import annotations

import pytest
import torch

from mtft.adapters import ADAPTERS
from mtft.adapters.lora import LoraConfig
from mtft.data.collate import collate, count_samples
from mtft.data.packing import collate_rows
from mtft.data.tasks import Sample
from mtft.logging.throughput import ThroughputWindow, attended_positions, matmul_parameters, peak_flops, step_flops
from mtft.models import TinyModelConfig, build_byte_tokenizer, build_tiny_model

CFG = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)


def _model():
    return build_tiny_model(CFG, build_byte_tokenizer())


def test_matmul_parameters_by_hand():
    model = _model()
    d, ff, vocab, layers = 64, 128, model.config.vocab_size, 2
    kv = d // 4 * 2  # 2 key/value heads of size 16
    per_layer = d * d + 2 * d * kv + d * d + 3 * d * ff  # q, k, v, o, gate/up/down
    # tied embeddings: the one matrix is the output head's multiply; the lookup costs nothing
    assert matmul_parameters(model) == (layers * per_layer + vocab * d, layers * per_layer + vocab * d)

    lora = ADAPTERS["lora"].inject(_model(), LoraConfig(rank=4, target_modules=["q_proj", "v_proj"]))
    lora_params = layers * ((4 * d + d * 4) + (4 * d + kv * 4))  # q: A 4×d, B d×4; v: A 4×d, B kv×4
    assert matmul_parameters(lora) == (layers * per_layer + vocab * d + lora_params, lora_params)


def test_attended_positions_count_each_packed_sample_on_its_own():
    a, b = Sample([1, 2, 3], [1, 2, 3], 0), Sample([4, 5], [4, 5], 1)
    padded = collate([a, b], pad_token_id=0)
    assert attended_positions(padded) == (1 + 2 + 3) + (1 + 2)  # causal: a token at p attends to p + 1
    assert count_samples(padded) == 2
    packed = collate_rows([[a, b]], pad_token_id=0)  # one row, positions restart for b
    assert attended_positions(packed) == (1 + 2 + 3) + (1 + 2)
    assert count_samples(packed) == 2


def test_step_flops_formula():
    # 10 tokens, P=100 (30 trainable), 2 layers of width 8, Σ(p+1)=55 (one sample of 10 tokens)
    assert step_flops(10, 55, 100, 30, 2, 8) == 10 * (4 * 100 + 2 * 30) + 12 * 2 * 8 * 55
    # a full fine-tune without attention is the familiar 6·P per token
    assert step_flops(1, 0, 100, 100, 2, 8) == 600


def test_mfu_is_flops_over_time_over_peak(monkeypatch):
    model = _model()
    window = ThroughputWindow(model, world_size=2, peak=1e9)
    clock = iter([100.0, 102.0, 102.0])  # reset(), then fields() (which resets again): two seconds
    monkeypatch.setattr("mtft.logging.throughput.perf_counter", lambda: next(clock))
    window.reset()
    window.add(tokens=1000, samples=10, attended=5000)
    fields = window.fields()
    flops = step_flops(1000, 5000, *matmul_parameters(model), layers=2, hidden=64)
    assert fields["tokens_per_second"] == 500 and fields["samples_per_second"] == 5
    assert fields["throughput/tflops_per_device"] == pytest.approx(flops / 2 / 2 / 1e12)  # 2 s, 2 devices
    assert fields["throughput/mfu"] == pytest.approx(flops / 2 / 2 / 1e9)
    assert fields["memory/peak_rss_gb"] > 0


def test_peak_flops_configured_or_unknown():
    assert peak_flops(312.0, "fp32") == 312e12  # configured wins
    if not torch.cuda.is_available():
        assert peak_flops(None, "bf16") is None  # a CPU: no MFU unless configured
