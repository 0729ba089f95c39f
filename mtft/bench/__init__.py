"""Benchmark suites behind `mtft-bench <suite>`: each compares a feature with its baseline in one process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mtft.bench import adapters, all_suites, balancer, data, gpu, gpu_smoke, load, memory, ops, serve

SUITES: dict[str, Callable[[], dict[str, Any]]] = {
    "adapters": adapters.run,
    "balancer": balancer.run,
    "data": data.run,
    "memory": memory.run,
}
# Suites with their own options and checks: `mtft-bench gpu-smoke --help`; each returns the exit status.
COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "all": all_suites.main,
    "gpu": gpu.main,
    "gpu-smoke": gpu_smoke.main,
    "load": load.main,
    "ops": ops.main,
    "serve": serve.main,
}
