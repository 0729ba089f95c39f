"""`mtft-bench ops`: what one optimizer step dispatches, counted on the CPU, for plain and any mtft configuration.

Why: a step's overhead on a GPU is launches and host syncs, and both can be counted without one. Every top-level
aten op (one not called from inside another aten op) is at least one kernel launch on a GPU, and every scalar
read (`aten::_local_scalar_dense`) is a host sync that drains the GPU's queue. The counts do not depend on the
machine or its load, so a test holds them as budgets.

What counts as a host sync:
- `aten::_local_scalar_dense` (`.item()`, `float(t)`, `bool(t)`, `if t:`), except where only a CPU kernel makes it
  (fused AdamW's CPU kernel reads its step count; on CUDA it does not sync): reported apart, as `cpu_only`;
- a marked host read (`mtft::host_read`, the one place the training step copies its numbers to the host:
  training/step.py `host_values`);
- a top-level `aten::resolve_conj` outside such a read: what `Tensor.tolist()` and `.numpy()` dispatch.
A `.cpu()` of a CPU tensor dispatches nothing, so a stray one is invisible here; the step has none.

Each configuration is built in this process (`mtft-bench gpu`'s Plain and Mtft runners), warmed up for
`--warmup` steps, and one optimizer step is profiled. mtft's micro-batches are drawn before the profiled step, as
the plain loop's are prebuilt: the data pipeline runs on the host, not on the device.
"""

from __future__ import annotations

import argparse
import collections
import json
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mtft.adapters import baseline_adapter, compared_adapters
from mtft.bench import gpu
from mtft.data.config import DataConfig
from mtft.models import build_byte_tokenizer
from mtft.training.engine import init_distributed
from mtft.training.step import HOST_READ

# The 0.5B layout (24 layers, GQA, tied embeddings) made narrow: the per-layer and per-tensor work of a real step
# at a size a CPU profiles in seconds.
NARROW = dict(
    gpu.SHAPES["0.5b"],
    hidden_size=128,
    vocab_size=4096,
    num_attention_heads=2,
    num_key_value_heads=1,
    intermediate_size=512,
)
SHAPES: dict[str, dict[str, Any]] = {"narrow": NARROW, **gpu.SHAPES}
CPU_ONLY_SYNCS = ("aten::_fused_adamw_", "aten::_fused_adam_")  # their CPU kernels read the step; CUDA's do not


@dataclass
class StepCount:
    ops: int  # top-level aten ops of one optimizer step
    syncs: int  # host syncs (see the module docstring)
    sync_sources: dict[str, int]  # the top-level op (or marked read) each sync comes from
    cpu_only_syncs: int  # scalar reads only a CPU kernel makes
    optimizer: str
    top_ops: list[tuple[str, int]]


def _ancestors(event) -> list:
    chain, parent = [], event.cpu_parent
    while parent is not None:
        chain.append(parent)
        parent = parent.cpu_parent
    return chain


def count_events(events) -> tuple[int, dict[str, int], int, collections.Counter]:
    """(top-level aten ops, syncs by source, CPU-only scalar reads, top-level op names) of profiler events."""
    ops: collections.Counter = collections.Counter()
    syncs: collections.Counter = collections.Counter()
    cpu_only = 0
    for event in events:
        if event.name == HOST_READ:
            syncs[HOST_READ] += 1
        if not event.name.startswith("aten::"):
            continue
        chain = _ancestors(event)
        aten = [a for a in chain if a.name.startswith("aten::")]
        if not aten:
            ops[event.name] += 1
            if event.name == "aten::resolve_conj" and not any(a.name == HOST_READ for a in chain):
                syncs["tolist/numpy"] += 1
        if event.name == "aten::_local_scalar_dense":
            if any(a.name in CPU_ONLY_SYNCS for a in aten):
                cpu_only += 1
            else:
                syncs[aten[-1].name if aten else event.name] += 1
    return sum(ops.values()), dict(syncs), cpu_only, ops


def count_step(runner: gpu.Runner) -> StepCount:
    """Profile one optimizer step of a `mtft-bench gpu` runner (its batches drawn first, outside the profile)."""
    from torch.profiler import ProfilerActivity, profile

    batches = runner.next_batches()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        runner.train_on(batches)
    ops, syncs, cpu_only, names = count_events(prof.events())
    return StepCount(ops, sum(syncs.values()), syncs, cpu_only, runner.optimizer_name(), names.most_common(10))


def count_configs(
    shape: dict[str, Any], configs: list[str], precisions: list[str], batch: int, seq: int, warmup: int
) -> dict[str, dict[str, Any]]:
    """{"<config>/<precision>": StepCount as a dict} for each configuration, each built in this process."""
    init_distributed()
    tokenizer = build_byte_tokenizer()
    workdir = Path(tempfile.mkdtemp(prefix="mtft-bench-ops-"))
    data = DataConfig(tasks=gpu.synthetic_tasks(workdir, seq, samples=60), packing=True, max_seq_len=seq)
    device = torch.device("cpu")
    results: dict[str, dict[str, Any]] = {}
    for precision in precisions:
        setup = gpu.Setup(shape, precision, device, batch, seq, "sdpa")
        for name in configs:
            print(f"counting {name} ({precision}) ...", flush=True)
            if name == "plain":
                runner = gpu.Plain(setup, gpu.prebuilt_batches(data, tokenizer, batch, 4, device))
            else:
                runner = gpu.Mtft(setup, name, data, tokenizer)
            for _ in range(warmup):
                runner.step()
            results[f"{name}/{precision}"] = asdict(count_step(runner))
            del runner
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    results = count_configs(SHAPES[args.shape], args.configs, args.precisions, args.batch, args.seq, args.warmup)
    return {
        "suite": "ops",
        "command": args.command,
        "date": time.strftime("%Y-%m-%d"),
        "shape": args.shape,
        "tokens_per_micro_batch": args.batch * args.seq,
        "torch": torch.__version__,
        "results": results,
        "ratios": ratios(results),
    }


def suite(quick: bool) -> dict[str, Any]:
    """For `mtft-bench all`: the default table, or (quick) plain and LoRA at the tiny shape."""
    argv = ["--shape", "tiny", "--configs", "plain,lora", "--precisions", "bf16", "--seq", "64", "--warmup", "1"]
    args = parse_args(argv if quick else [])
    args.command = shlex.join(["mtft-bench", "ops", *(argv if quick else [])])
    return run(args)


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Each configuration's ops over plain's, and a mixture's over its twin of the baseline adapter (LoRA, with the
    same flags), in the same precision."""
    out = {}
    for key, result in results.items():
        name, precision = key.split("/")
        adapter, *flags = name.split("+")
        if name != "plain" and f"plain/{precision}" in results:
            out[f"{name}_ops_over_plain/{precision}"] = result["ops"] / results[f"plain/{precision}"]["ops"]
        twin = "+".join([baseline_adapter(), *flags]) + f"/{precision}"
        if adapter != "plain" and key != twin and twin in results:
            out[f"{name}_ops_over_{twin.split('/')[0]}/{precision}"] = result["ops"] / results[twin]["ops"]
    return out


def print_table(report: dict[str, Any]) -> None:
    print(f"\n{report['shape']}, {report['tokens_per_micro_batch']} tokens per micro-batch, one optimizer step")
    width = max(len(r["optimizer"]) for r in report["results"].values()) + 2
    print(f"{'config':<24}{'ops':>8}{'syncs':>7}{'cpu-only':>9}  {'optimizer':<{width}}sync sources")
    for key, r in report["results"].items():
        sources = ", ".join(f"{name} {count}" for name, count in r["sync_sources"].items()) or "-"
        print(f"{key:<24}{r['ops']:>8,}{r['syncs']:>7}{r['cpu_only_syncs']:>9}  {r['optimizer']:<{width}}{sources}")
    for key, r in report["results"].items():
        print(f"{key}: " + ", ".join(f"{name.removeprefix('aten::')} {count}" for name, count in r["top_ops"]))
    for name, value in report["ratios"].items():
        print(f"{name:<48}{value:>8.3f}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mtft-bench ops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="narrow")
    parser.add_argument(
        "--configs",
        default="plain,lora,smora,molora,mor1e",
        help=f"comma-separated: plain, or {'|'.join(compared_adapters(gpu.LORA_RANK, gpu.ALPHA))} "
        "[+compile +chunked +ckpt +zero1|2 +accum2]",
    )
    parser.add_argument("--precisions", default="bf16,fp32", help="comma-separated: bf16, fp32")
    parser.add_argument("--batch", type=int, default=1, help="packed rows per micro-batch")
    parser.add_argument("--seq", type=int, default=256, help="tokens per packed row")
    parser.add_argument("--warmup", type=int, default=3, help="steps before the counted one")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    args = parser.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if unknown := [p for p in args.precisions if p not in ("bf16", "fp32")]:
        parser.error(f"--precisions: unknown {unknown}; choose bf16, fp32")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.command = shlex.join(["mtft-bench", "ops", *argv])
    report = run(args)
    print_table(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
