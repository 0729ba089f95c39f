"""Adapter registry: `adapter=<name>` in the config selects one of these. Each method's module registers itself
(`register_adapter`, in adapters/base.py) and this package imports every module it holds, so a new method is one
file. Checked: a unique name, equal to its config's `name`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from mtft.adapters.base import (
    ADAPTER_CONFIG_FILE,
    ADAPTERS,
    AdapterConfig,
    AdapterMethod,
    AdapterRuntime,
    attach_runtime,
    register_adapter,
    runtime_of,
    target_linears,
    write_adapter_config,
)
from mtft.registry import import_methods

import_methods(__name__, __path__)


def baseline_adapter() -> str:
    """The registered method the benchmarks compare every other with: the one whose config is `is_baseline`."""
    names = [name for name, method in ADAPTERS.items() if method.config.is_baseline]
    if len(names) != 1:
        raise ValueError(f"exactly one adapter config may set is_baseline; these do: {names}")
    return names[0]


def compared_adapters(
    rank: int, alpha: float, model: nn.Module | None = None, runs: bool = False
) -> dict[str, AdapterConfig]:
    """Every registered method the benchmarks compare, at LoRA `rank`'s budget on `model`'s Linears (all but the
    output head, as `all-linear` wraps them): within 5% of LoRA's trainable parameters, the baseline first. A method
    with no configuration that close is left out, with a warning. With `runs`, each method's `run_variants` are
    fixed first and counted too (MoR1E's prior: a run on real data trains it). Without a model: which methods."""
    linears = target_linears(model) if model is not None else []
    shapes = [(m.in_features, m.out_features) for _, m in linears]
    configs = {
        name: method.config.at_lora_budget(rank, alpha, shapes, run_settings(method.config) if runs else None)
        for name, method in ADAPTERS.items()
    }
    baseline = baseline_adapter()
    names = [baseline, *sorted(name for name in configs if name != baseline)]
    return {name: configs[name] for name in names if configs[name] is not None}


def run_settings(config: type[AdapterConfig]) -> dict[str, Any]:
    """Every setting of a config's `run_variants`, merged: how a run on real data sets the method."""
    return {key: value for variant in config.run_variants for key, value in variant.items()}


def adapter_variants(runs: bool = False) -> dict[str, tuple[str, dict[str, Any]]]:
    """Run name -> (adapter, settings): every registered adapter at its defaults (`mor1e`), then at each of its
    config's `matrix_variants` and, with `runs`, its `run_variants` (`mor1e-top_k_0`: a name that is a path and a
    Hydra value); the baseline first."""
    baseline = baseline_adapter()
    variants = {}
    for name in [baseline, *sorted(n for n in ADAPTERS if n != baseline)]:
        config = ADAPTERS[name].config
        variants[name] = (name, {})
        for settings in [*config.matrix_variants, *(config.run_variants if runs else ())]:
            variants["-".join([name, *(f"{k}_{v}" for k, v in settings.items())])] = (name, settings)
    return variants


def save_adapter(model: nn.Module, cfg: AdapterConfig, directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ADAPTERS[cfg.name].save(model, directory)
    write_adapter_config(cfg, directory)


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Restore what `save_adapter` wrote onto a freshly loaded base model (in any process), with its runtime
    attached (`runtime_of(model).before_generate(prompts)` before generating from it)."""
    directory = Path(directory)
    saved = json.loads((directory / ADAPTER_CONFIG_FILE).read_text())
    method = ADAPTERS[saved["name"]]
    model = method.load(model, directory)
    return attach_runtime(model, method.runtime(model, method.config(**saved)))


__all__ = [
    "ADAPTERS",
    "AdapterConfig",
    "AdapterMethod",
    "AdapterRuntime",
    "adapter_variants",
    "attach_runtime",
    "baseline_adapter",
    "compared_adapters",
    "load_adapter",
    "register_adapter",
    "run_settings",
    "runtime_of",
    "save_adapter",
]
