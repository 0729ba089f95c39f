"""Adapter registry: `adapter=<name>` in the config selects one of these; `register_adapter` adds one (checked:
unique name, equal to its config's `name` and, by a test, to a YAML file in configs/adapter/)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from torch import nn

from mtft.adapters import full, lora, molora, mor1e, smora
from mtft.adapters.base import ADAPTER_CONFIG_FILE, AdapterConfig, AdapterMethod, write_adapter_config
from mtft.adapters.moe import ExpertsRuntime, load_experts, save_experts
from mtft.registry import Registry


def _experts(config: type[AdapterConfig], inject, runtime=lambda model, cfg: ExpertsRuntime(model)) -> AdapterMethod:
    """A mixture-of-experts method: saved as its own safetensors; routing is per token, so it cannot be merged."""
    load = partial(load_experts, config_class=config, inject=inject)
    return AdapterMethod(config, inject, save_experts, load, runtime)


ADAPTERS: Registry[AdapterMethod] = Registry("adapter")
register_adapter = ADAPTERS.register

register_adapter("none", AdapterMethod(full.FullFinetuneConfig, full.inject, full.save, full.load))
register_adapter("lora", AdapterMethod(lora.LoraConfig, lora.inject, lora.save, lora.load))
register_adapter("molora", _experts(molora.MoLoRAConfig, molora.inject))
register_adapter("mor1e", _experts(mor1e.MoR1EConfig, mor1e.inject, mor1e.runtime))
register_adapter("smora", _experts(smora.SMoRAConfig, smora.inject))


def save_adapter(model: nn.Module, cfg: AdapterConfig, directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ADAPTERS[cfg.name].save(model, directory)
    write_adapter_config(cfg, directory)


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Restore what `save_adapter` wrote onto a freshly loaded base model (in any process)."""
    directory = Path(directory)
    name = json.loads((directory / ADAPTER_CONFIG_FILE).read_text())["name"]
    return ADAPTERS[name].load(model, directory)


__all__ = ["ADAPTERS", "AdapterConfig", "AdapterMethod", "load_adapter", "register_adapter", "save_adapter"]
