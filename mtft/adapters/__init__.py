"""Adapter registry: `adapter=<name>` in the config selects one of these. Each method's module registers itself
(`register_adapter`, in adapters/base.py) and this package imports every module it holds, so a new method is one
file. Checked: a unique name, equal to its config's `name`."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from mtft.adapters.base import (
    ADAPTER_CONFIG_FILE,
    ADAPTERS,
    AdapterConfig,
    AdapterMethod,
    register_adapter,
    write_adapter_config,
)
from mtft.registry import import_methods

import_methods(__name__, __path__)


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
