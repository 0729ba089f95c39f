"""How fast a run goes: model FLOPs per step, achieved TFLOP/s per device, MFU, and peak memory.

FLOPs of one training step (the PaLM appendix-B convention, made exact for causal attention and frozen weights):

    FLOPs = tokens · (4·P + 2·P_trainable) + 12 · L · d · Σ_tokens (position + 1)

- P: parameters that take part in a matrix multiply (weights with ≥ 2 dimensions, the output head included,
  the input embedding lookup excluded). The forward costs 2·P per token and the backward's activation
  gradients another 2·P. Only trainable weights also cost 2·P_trainable for their weight gradients. A full
  fine-tune is therefore the familiar 6·P, and LoRA about 4·P.
- Attention scores and the weighted sum cost 4·d FLOPs per attended position and layer in the forward, three
  times that with the backward. A token at position p (counted within its own sample, so packing is exact)
  attends to p + 1 positions.

MFU = FLOPs / step time / (peak FLOP/s per device · devices). The peak is `logger.peak_tflops`. Left unset, it
is looked up for known GPUs at bf16/fp16 dense tensor-core rates; elsewhere (a CPU, fp32) MFU is not logged.
The FLOPs count the model's arithmetic, not what a kernel does: dense expert routing or padded attention do
more work than this counts, which is what MFU is meant to show.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from time import perf_counter

import torch
from torch import nn

from mtft.distributed import full_numel, full_shape

# dense bf16/fp16 tensor-core peaks, TFLOP/s per device (vendor data sheets, SXM parts)
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "V100": 125.0}


def matmul_parameters(model: nn.Module) -> tuple[int, int]:
    """(P, P_trainable): weights with ≥ 2 dimensions, less an untied input embedding; ZeRO-3 shards count whole."""
    total = trainable = 0
    for param in model.parameters():
        shape = full_shape(param)
        if len(shape) >= 2:
            n = full_numel(param)
            total += n
            trainable += n if param.requires_grad else 0
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if embedding is not None and head is not None and embedding.weight is not head.weight:
        n = full_numel(embedding.weight)
        total -= n
        trainable -= n if embedding.weight.requires_grad else 0
    return total, trainable


def attended_positions(batch: dict[str, torch.Tensor]) -> int:
    """Σ (position + 1) over the batch's real tokens: the causal attention work, each sample on its own."""
    real = batch["task_ids"] >= 0
    positions = batch.get("position_ids")
    if positions is None:  # padded rows: one sample each, from column 0
        positions = batch["attention_mask"].long().cumsum(-1) - 1
    return int(((positions + 1) * real).sum())


def step_flops(tokens: int, attended: int, params: int, trainable: int, layers: int, hidden: int) -> float:
    return tokens * (4.0 * params + 2.0 * trainable) + 12.0 * layers * hidden * attended


def peak_flops(configured_tflops: float | None, precision: str) -> float | None:
    """FLOP/s per device: the configured peak, else a known GPU's at bf16/fp16; None when unknown."""
    if configured_tflops is not None:
        return configured_tflops * 1e12
    if precision == "fp32" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    found = [tflops for model, tflops in PEAK_TFLOPS.items() if model in name]
    return found[0] * 1e12 if found else None


def peak_memory() -> dict[str, float]:
    """The process's peak resident memory, and the accelerator's peak allocation where there is one (GB)."""
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss = rss_kb / 1e6 if sys.platform != "darwin" else rss_kb / 1e9  # macOS reports bytes
    memory = {"memory/peak_rss_gb": round(rss, 3)}
    if torch.cuda.is_available():
        memory["memory/peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
    return memory


class ThroughputWindow:
    """Tokens, samples and FLOPs of the training steps since the last log record, turned into rates when it is
    written."""

    def __init__(self, model: nn.Module, world_size: int, peak: float | None):
        self.params, self.trainable = matmul_parameters(model)
        config = model.config  # any HF causal LM: the attention term needs its depth and width
        self.layers, self.hidden = config.num_hidden_layers, config.hidden_size
        self.world_size, self.peak = world_size, peak
        self.reset()

    def reset(self) -> None:
        self.tokens = self.samples = 0
        self.flops = 0.0
        self.start = perf_counter()
        self.excluded = 0.0

    @contextlib.contextmanager
    def paused(self):
        """Time spent in here (evaluation, generation, checkpoints) does not count: the rates are training's."""
        start = perf_counter()
        try:
            yield
        finally:
            self.excluded += perf_counter() - start

    def add(self, tokens: int, samples: int, attended: int) -> None:
        """One step, summed over ranks."""
        self.tokens += tokens
        self.samples += samples
        self.flops += step_flops(tokens, attended, self.params, self.trainable, self.layers, self.hidden)

    def fields(self) -> dict[str, float]:
        elapsed = max(perf_counter() - self.start - self.excluded, 1e-9)
        per_device = self.flops / elapsed / self.world_size
        fields = {
            "tokens_per_second": self.tokens / elapsed,
            "samples_per_second": self.samples / elapsed,
            "throughput/tflops_per_device": per_device / 1e12,
        }
        if self.peak:
            fields["throughput/mfu"] = per_device / self.peak
        self.reset()
        return {**fields, **peak_memory()}
