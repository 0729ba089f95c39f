"""Adapter registry: `adapter=<name>` in the config selects one of these."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from mtft.adapters import full, lora
from mtft.adapters.base import ADAPTER_CONFIG_FILE, AdapterConfig, AdapterMethod, write_adapter_config

ADAPTERS: dict[str, AdapterMethod] = {
    "none": AdapterMethod(full.FullFinetuneConfig, full.inject, full.save, full.load),
    "lora": AdapterMethod(lora.LoraConfig, lora.inject, lora.save, lora.load),
}


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


__all__ = ["ADAPTERS", "AdapterConfig", "AdapterMethod", "load_adapter", "save_adapter"]
