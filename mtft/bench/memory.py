"""`mtft-bench memory`: what the memory options save, each case measured in a fresh process (peak resident
memory above what the process held before the step), forward and backward of one micro-batch, LoRA r=16, fp32.

1. trainer.cross_entropy: full vs chunked, on a model with Qwen2.5's 151,936-token vocabulary and 4 packed rows
   of 2048 tokens: the full logits are 4 × 2048 × 151,936 values, 5 GB in fp32, before the loss's own copies.
   Two decoder layers: the head and the loss are what differ, and the body only adds time.
2. trainer.gradient_checkpointing: off vs on, on a 24-layer model of Qwen2.5-0.5B's width (hidden 896,
   intermediate 4864) with a small vocabulary, so the layers' activations are what is measured; one 2048-token row.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch

from mtft.adapters import ADAPTERS
from mtft.adapters.lora import LoraConfig
from mtft.bench.gpu_smoke import QWEN_0_5B
from mtft.bench.isolated import in_fresh_process, peak_resident_bytes, reset_peak, resident_bytes
from mtft.models import enable_gradient_checkpointing
from mtft.training.cross_entropy import CROSS_ENTROPY
from mtft.training.losses import next_token_targets
from mtft.training.model_runner import PlainRunner

CASES: dict[str, dict[str, Any]] = {
    "cross_entropy=full": dict(layers=2, vocab=151936, batch=4, cross_entropy="full", checkpointing=False),
    "cross_entropy=chunked": dict(layers=2, vocab=151936, batch=4, cross_entropy="chunked", checkpointing=False),
    "gradient_checkpointing=false": dict(layers=24, vocab=512, batch=1, cross_entropy="full", checkpointing=False),
    "gradient_checkpointing=true": dict(layers=24, vocab=512, batch=1, cross_entropy="full", checkpointing=True),
}
SEQ = 2048
QUICK_SEQ, QUICK_LAYERS, QUICK_VOCAB = 128, 2, 8192  # `--quick`: the code path, not a measurement to quote


def measure(case: str, quick: bool = False) -> dict[str, Any]:
    """In a fresh process: the step's peak resident memory above the process's memory just before it."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    spec = CASES[case]
    seq, layers, vocab = (SEQ, spec["layers"], spec["vocab"])
    if quick:
        seq, layers, vocab = QUICK_SEQ, min(layers, QUICK_LAYERS), min(vocab, QUICK_VOCAB)
    config = Qwen2Config(
        **{**QWEN_0_5B, "vocab_size": vocab, "num_hidden_layers": layers},
        use_cache=False,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = ADAPTERS["lora"].inject(Qwen2ForCausalLM(config), LoraConfig(rank=16)).train()
    runtime = ADAPTERS["lora"].runtime(model, LoraConfig(rank=16))
    if spec["checkpointing"]:
        enable_gradient_checkpointing(model, runtime.recomputation)
    ids = torch.randint(0, vocab, (spec["batch"], seq))
    positions = torch.arange(seq).remainder(seq // 4).expand(spec["batch"], seq)  # four packed samples a row
    before = resident_bytes()
    reset_peak()
    inputs, targets = {"input_ids": ids, "position_ids": positions}, next_token_targets(ids)
    losses = CROSS_ENTROPY[spec["cross_entropy"]](PlainRunner.alone(model), inputs, targets)
    losses.mean().backward()
    peak = peak_resident_bytes()
    return {"peak_above_start_mb": (peak - before) / 2**20, "loss": float(losses.mean())}


def run(quick: bool = False) -> dict[str, Any]:
    seq = QUICK_SEQ if quick else SEQ
    results = {}
    for case in CASES:
        results[case] = in_fresh_process("mtft.bench.memory", case, quick)
    mb = {case: r["peak_above_start_mb"] for case, r in results.items()}
    return {
        "suite": "memory",
        "cases": CASES,
        "seq": seq,
        "results": results,
        "ratios": {
            "chunked_over_full_cross_entropy_peak": mb["cross_entropy=chunked"] / mb["cross_entropy=full"],
            "checkpointing_over_none_peak": mb["gradient_checkpointing=true"] / mb["gradient_checkpointing=false"],
        },
    }


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], quick="--quick" in sys.argv)))
