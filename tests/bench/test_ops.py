"""What one training step dispatches (issue 19), counted by `mtft-bench ops` on the CPU. The counts are exact,
so the budgets are asserted: every top-level aten op is at least one kernel launch on a GPU, and every host sync
drains the GPU's queue."""

from __future__ import annotations

import pytest
import torch

from mtft.adapters import compared_adapters
from mtft.bench import gpu, ops
from mtft.training.step import host_values

# every adapter the benchmarks compare (at LoRA r64's budget), the baseline (LoRA) first
BASELINE, *MIXTURES = ADAPTER_NAMES = list(compared_adapters(gpu.LORA_RANK, gpu.ALPHA))
# The op budgets at the narrow 24-layer 0.5B layout, at a short sequence: the counts per layer and per step are a
# real model's, and each profile takes a second or two.
SEQ = 64
OPS_BF16 = ["plain", *ADAPTER_NAMES]
OPS_FP32 = ["plain", BASELINE]  # the adapters' layers are the same in either precision
MIXTURE_OPS_OVER_LORA = 1.3  # each mixture's bf16 step over LoRA's: the budget
# The sync budget for every adapter, ZeRO stage and accumulation, at the tiny shape: syncs come from the step's
# machinery (optimizer, guard, reads), not from the model's size.
SYNC_BF16 = [f"{a}{flags}" for a in ADAPTER_NAMES for flags in ("", "+accum2", "+zero2", "+zero2+accum2")]
SYNC_FP32 = [f"{BASELINE}{flags}" for flags in ("", "+accum2", "+zero1", "+zero2", "+zero2+accum2")]


@pytest.fixture(scope="module")
def counts() -> dict[str, dict]:
    results = ops.count_configs(ops.NARROW, OPS_BF16, ["bf16"], batch=1, seq=SEQ, warmup=1)
    return results | ops.count_configs(ops.NARROW, OPS_FP32, ["fp32"], batch=1, seq=SEQ, warmup=1)


@pytest.fixture(scope="module")
def tiny_counts() -> dict[str, dict]:
    results = ops.count_configs(ops.SHAPES["tiny"], SYNC_BF16, ["bf16"], batch=1, seq=SEQ, warmup=1)
    return results | ops.count_configs(ops.SHAPES["tiny"], SYNC_FP32, ["fp32"], batch=1, seq=SEQ, warmup=1)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_lora_dispatches_no_more_ops_than_the_plain_peft_loop(counts, precision):
    lora, plain = counts[f"{BASELINE}/{precision}"], counts[f"plain/{precision}"]
    assert lora["ops"] <= plain["ops"], (lora["ops"], plain["ops"])
    assert lora["optimizer"] == "MasterAdamW (fused)"


@pytest.mark.parametrize("key", [f"{c}/bf16" for c in SYNC_BF16] + [f"{c}/fp32" for c in SYNC_FP32])
def test_every_step_makes_one_host_sync(tiny_counts, key):
    """ZeRO-0 and ZeRO-1/2, with and without accumulation: the step's one read of its numbers, and nothing else
    (no overflow flag, norm or step counter read by DeepSpeed or torch)."""
    assert tiny_counts[key]["sync_sources"] == {"mtft::host_read": 1}, tiny_counts[key]["sync_sources"]
    zero = "zero" in key
    assert tiny_counts[key]["optimizer"].endswith("around GuardedAdamW (fused)" if zero else "MasterAdamW (fused)")


@pytest.mark.parametrize("mixture", MIXTURES)
def test_each_mixture_stays_close_to_loras_ops(counts, mixture):
    ratio = counts[f"{mixture}/bf16"]["ops"] / counts[f"{BASELINE}/bf16"]["ops"]
    assert ratio <= MIXTURE_OPS_OVER_LORA, ratio


@pytest.mark.parametrize("zero", ["", "+zero2"])
def test_accumulation_adds_no_host_work_per_micro_batch(tiny_counts, zero):
    """A second micro-batch adds its forward and backward, not another pass of per-tensor work."""
    one, two = tiny_counts[f"{BASELINE}{zero}/bf16"]["ops"], tiny_counts[f"{BASELINE}{zero}+accum2/bf16"]["ops"]
    assert two < 2 * one


def test_count_events_tells_syncs_from_cpu_only_reads():
    from torch.profiler import ProfilerActivity, profile

    param = torch.nn.Parameter(torch.ones(4))
    param.grad = torch.ones(4)
    optimizer = torch.optim.AdamW([param], fused=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.ones(3).sum().item()  # a scalar read
        torch.ones(2).tolist()  # a copy to the host
        host_values(torch.ones(2))  # the step's marked read: one, not also a tolist
        optimizer.step()  # fused AdamW's CPU kernel reads its step: CPU-only
    total, syncs, cpu_only, _ = ops.count_events(prof.events())
    assert syncs == {"aten::item": 1, "tolist/numpy": 1, "mtft::host_read": 1}
    assert cpu_only == 1 and total > 0
