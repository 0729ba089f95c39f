"""`mtft-bench adapters`: the train step (forward, backward, AdamW) of each MoE adapter against PEFT LoRA r=64,
on a ~30M-parameter Llama, each in its own process so that peak memory (max RSS) is its own.

Compared configurations (the issue's targets): smora r=64 k=8; molora 8 experts x r8, top-2; mor1e with r1 = r2
chosen so its trainable parameters are closest to LoRA r=64's.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from mtft.adapters import ADAPTERS
from mtft.adapters.lora import LoraConfig
from mtft.adapters.molora import MoLoRAConfig
from mtft.adapters.mor1e import MoR1EConfig
from mtft.adapters.smora import SMoRAConfig
from mtft.models import TinyModelConfig, build_byte_tokenizer, build_tiny_model

MODEL = TinyModelConfig(hidden_size=512, num_layers=10, num_heads=8, num_kv_heads=8, intermediate_size=1376)
BATCH, SEQ, WARMUP, STEPS = 2, 256, 2, 6
QUICK_WARMUP, QUICK_STEPS = 1, 2  # `--quick`: the code path, not a measurement to quote


def _configs() -> dict[str, Any]:
    return {
        "lora": LoraConfig(rank=64, alpha=128),
        "smora": SMoRAConfig(rank=64, top_k=8, alpha=128),
        "molora": MoLoRAConfig(num_experts=8, expert_rank=8, top_k=2, alpha=128),
        "mor1e": MoR1EConfig(num_down=_mor1e_rank(), num_up=_mor1e_rank(), top_k=8, alpha=128),
    }


def _mor1e_rank() -> int:
    """r1 = r2 = r whose MoR1E has about LoRA r=64's trainable parameters on MODEL's Linear shapes."""
    shapes = [(m.in_features, m.out_features) for m in _model().modules() if isinstance(m, torch.nn.Linear)][:-1]
    lora = sum(64 * (i + o) for i, o in shapes)
    return min(range(1, 65), key=lambda r: abs(sum(r * (i + o) + i * r * r for i, o in shapes) - lora))


def _model():
    torch.manual_seed(0)
    return build_tiny_model(MODEL, build_byte_tokenizer())


def measure(name: str, quick: bool = False) -> dict[str, Any]:
    """Run in a fresh process: median step seconds, trainable parameters, peak RSS."""
    torch.manual_seed(0)
    model = ADAPTERS[name].inject(_model(), _configs()[name]).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    ids = torch.randint(0, 256, (BATCH, SEQ))
    times = []
    warmup, steps = (QUICK_WARMUP, QUICK_STEPS) if quick else (WARMUP, STEPS)
    for step in range(warmup + steps):
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return {
        "step_seconds": statistics.median(times),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run(quick: bool = False) -> dict[str, Any]:
    results = {}
    for name in ("lora", "smora", "molora", "mor1e"):
        proc = subprocess.run(
            [sys.executable, "-m", "mtft.bench.adapters", name, *(["--quick"] if quick else [])],
            capture_output=True,
            text=True,
            check=True,
        )
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    base = results["lora"]
    ratios = {}
    for name in ("smora", "molora", "mor1e"):
        ratios[f"{name}_step_time_over_lora64"] = results[name]["step_seconds"] / base["step_seconds"]
        ratios[f"{name}_peak_memory_over_lora64"] = results[name]["peak_rss_mb"] / base["peak_rss_mb"]
    configs = {name: vars(cfg) for name, cfg in _configs().items()}
    return {
        "suite": "adapters",
        "model": vars(MODEL),
        "tokens_per_step": BATCH * SEQ,
        "configs": configs,
        "results": results,
        "ratios": ratios,
    }


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], quick="--quick" in sys.argv)))
