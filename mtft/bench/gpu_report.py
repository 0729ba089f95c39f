"""`mtft-bench gpu`'s report: each configuration's step time, throughput, MFU and peak memory, the ratios against
the plain PEFT loop and against the baseline adapter with the same flags, and the versions that ran them."""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from mtft.adapters import baseline_adapter
from mtft.logging.throughput import matmul_parameters, peak_flops, step_flops


def report(
    args: argparse.Namespace, setup, runners: dict[str, Any], measured: dict[str, Any], failures: dict[str, str]
) -> dict[str, Any]:
    """`setup`, `measured`: bench/gpu.py's Setup and Measured."""
    cuda = setup.device.type == "cuda"
    peak = peak_flops(None, setup.precision)
    results: dict[str, dict[str, Any]] = {}
    for name, runner in runners.items():
        m = measured[name]
        model = runner.model if name == "plain" else runner.engine.module
        params, trainable = matmul_parameters(model)
        step_seconds = statistics.median(m.times)
        tokens_per_step = statistics.fmean(m.tokens)
        layers, hidden = setup.shape["num_hidden_layers"], setup.shape["hidden_size"]
        flops = step_flops(tokens_per_step, statistics.fmean(m.attended), params, trainable, layers, hidden)
        results[name] = {
            "step_seconds": step_seconds,
            "tokens_per_second": tokens_per_step / step_seconds,
            "mfu": flops / step_seconds / peak if peak else None,
            "peak_gb": (m.resident + m.transient) / 1e9 if cuda else None,
            "trainable_parameters": trainable,
            "warmup_seconds": m.warmup_seconds,
        }
    ratios = {}
    if "plain" in results:
        for name, r in results.items():
            if name != "plain":
                ratios[f"{name}_throughput_over_plain"] = (
                    r["tokens_per_second"] / results["plain"]["tokens_per_second"]
                )
    for name, r in results.items():
        adapter, *flags = name.split("+")
        twin = "+".join([baseline_adapter(), *flags])
        if name != twin and adapter != "plain" and twin in results:
            ratios[f"{name}_step_over_{twin}"] = r["step_seconds"] / results[twin]["step_seconds"]
    return {
        "suite": "gpu",
        "command": args.command,
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name() if cuda else "cpu (dry run)",
        "versions": versions(),
        "shape": "tiny" if args.dry_run else args.shape,
        "precision": setup.precision,
        "attention": setup.attention,
        "tokens_slots_per_step": args.batch * args.seq,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "results": results,
        "ratios": ratios,
        "failures": failures,
    }


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"torch": torch.__version__, "cuda": str(torch.version.cuda)} | {
        name: version(name) for name in ("transformers", "peft", "deepspeed")
    }


def print_table(report: dict[str, Any]) -> None:
    print(f"\n{report['device']}, {report['shape']}, {report['precision']}, {report['attention']}, ", end="")
    print(f"{report['tokens_slots_per_step']} token slots per step, packed")
    print(f"{'config':<28}{'step ms':>9}{'tokens/s':>11}{'MFU':>7}{'peak GB':>9}{'warm-up s':>11}")
    for name, r in report["results"].items():
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        peak = f"{r['peak_gb']:.1f}" if r["peak_gb"] is not None else "-"
        print(f"{name:<28}{r['step_seconds'] * 1e3:>9.1f}{r['tokens_per_second']:>11,.0f}{mfu:>7}{peak:>9}", end="")
        print(f"{r['warmup_seconds']:>11.1f}")
    for name, value in report["ratios"].items():
        print(f"{name:<60}{value:>8.3f}")
    for name, message in report["failures"].items():
        print(f"{name}: FAILED {message}")
