"""`mtft-bench adapters`: the train step (forward, backward, AdamW) of each MoE adapter against PEFT LoRA r=64,
on a ~30M-parameter Llama.

Step time: all the models live in one process and take their steps in turn, round after round, so that a
slow spell of the machine falls on every adapter alike; the report gives each adapter's median step. Peak
memory: each adapter trains a few steps in a fresh process of its own (bench/isolated.py), whose peak is its own.

Compared: every registered adapter with a configuration at LoRA r=64's budget (`at_lora_budget` of its config:
the configuration whose trainable parameters, routers included, are nearest LoRA's and within ±5% of them).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import torch

from mtft.adapters import ADAPTERS, baseline_adapter, compared_adapters
from mtft.bench.isolated import in_fresh_process, peak_resident_bytes
from mtft.models import TinyModelConfig, build_byte_tokenizer, build_tiny_model

MODEL = TinyModelConfig(hidden_size=512, num_layers=10, num_heads=8, num_kv_heads=8, intermediate_size=1376)
BATCH, SEQ, WARMUP, STEPS = 2, 256, 2, 10  # STEPS: timed rounds, one step of each adapter per round
# `--quick`: the code path at a small size, not a measurement to quote
QUICK_MODEL = TinyModelConfig(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=4, intermediate_size=256)
QUICK_SEQ, QUICK_WARMUP, QUICK_STEPS = 64, 1, 2


def _configs(quick: bool = False) -> dict[str, Any]:
    return compared_adapters(rank=64, alpha=128, model=_model(quick))


def _model(quick: bool = False):
    torch.manual_seed(0)
    return build_tiny_model(QUICK_MODEL if quick else MODEL, build_byte_tokenizer())


def _trainer(name: str, quick: bool = False):
    """The adapter on a fresh copy of the model, and a function that takes one train step and returns its time."""
    torch.manual_seed(0)
    model = ADAPTERS[name].inject(_model(quick), _configs(quick)[name]).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    ids = torch.randint(0, 256, (BATCH, QUICK_SEQ if quick else SEQ))

    def step() -> float:
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return model, trainable, step


def measure_memory(name: str, quick: bool = False) -> dict[str, Any]:
    """In a fresh process: the process's peak resident memory over a few train steps, and the parameter counts."""
    model, trainable, step = _trainer(name, quick)
    for _ in range(QUICK_WARMUP + QUICK_STEPS if quick else WARMUP + 1):
        step()
    return {
        "peak_rss_mb": peak_resident_bytes() / 2**20,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "total_parameters": sum(p.numel() for p in model.parameters()),
    }


def measure_time(names: list[str], quick: bool = False) -> dict[str, list[float]]:
    """Every adapter's step times, taken in turn, round after round, in this process (warm-up rounds dropped)."""
    steps = {name: _trainer(name, quick)[2] for name in names}
    warmup, rounds = (QUICK_WARMUP, QUICK_STEPS) if quick else (WARMUP, STEPS)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + rounds):
        for name, step in steps.items():
            seconds = step()
            if round_ >= warmup:
                times[name].append(seconds)
    return times


def run(quick: bool = False) -> dict[str, Any]:
    names, baseline = list(_configs(quick)), baseline_adapter()
    results = {name: in_fresh_process("mtft.bench.adapters", name, quick) for name in names}
    for name, times in measure_time(names, quick).items():
        results[name] |= {"step_seconds": statistics.median(times), "step_seconds_all": times}
    base = results[baseline]
    ratios = {}
    for name in names[1:]:
        ratios[f"{name}_step_time_over_{baseline}64"] = results[name]["step_seconds"] / base["step_seconds"]
        ratios[f"{name}_peak_memory_over_{baseline}64"] = results[name]["peak_rss_mb"] / base["peak_rss_mb"]
    configs = {name: vars(cfg) for name, cfg in _configs(quick).items()}
    return {
        "suite": "adapters",
        "model": vars(QUICK_MODEL if quick else MODEL),
        "tokens_per_step": BATCH * (QUICK_SEQ if quick else SEQ),
        "configs": configs,
        "results": results,
        "ratios": ratios,
    }


if __name__ == "__main__":
    print(json.dumps(measure_memory(sys.argv[1], quick="--quick" in sys.argv)))
