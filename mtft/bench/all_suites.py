"""`mtft-bench all [--quick] [--out FILE]`: every benchmark suite behind one command, one report.

The suites: data, adapters, balancer, memory, ops (aten ops and host syncs per step), and gpu where CUDA is
present (mtft's step against the plain PEFT loop at the 0.5B shape; without CUDA it is reported as skipped).
Each suite keeps its own method (its docstring says how it alternates and repeats); this command collects their
results and ratios (`<suite>/<ratio>`).
`--quick` runs each at a tiny size: the code paths, for CI, not numbers to quote.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mtft.bench import adapters, balancer, data, gpu, memory, ops

SUITES = {
    "data": data.run,
    "adapters": adapters.run,
    "balancer": balancer.run,
    "memory": memory.run,
    "ops": ops.suite,
}


def run(quick: bool) -> dict[str, Any]:
    report: dict[str, Any] = {"suite": "all", "quick": quick, "date": time.strftime("%Y-%m-%d"), "suites": {}}
    for name, suite in SUITES.items():
        start = time.perf_counter()
        print(f"mtft-bench all: {name} ...", flush=True)
        report["suites"][name] = suite(quick=quick) | {"seconds": time.perf_counter() - start}
    if torch.cuda.is_available():
        args = gpu.parse_args(["--rounds", "1", "--steps", "2"] if quick else [])
        args.command = "mtft-bench all"
        report["suites"]["gpu"] = gpu.run(args)
    else:
        report["suites"]["gpu"] = {"skipped": "no CUDA device", "ratios": {}}
    report["ratios"] = {
        f"{name}/{ratio}": value
        for name, result in report["suites"].items()
        for ratio, value in result["ratios"].items()
    }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtft-bench all", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every suite at a tiny size: the code paths, for CI")
    parser.add_argument("--out", type=Path, help="write the whole report as JSON here")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    report = run(args.quick)
    print(f"\n{'ratio':<64}{'value':>10}")
    for name, value in report["ratios"].items():
        print(f"{name:<64}{value:>10.4f}")
    if report["suites"]["gpu"].get("skipped"):
        print(f"gpu: skipped ({report['suites']['gpu']['skipped']})")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
        print(f"written to {args.out}")
    return 0
