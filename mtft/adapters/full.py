"""`adapter=full` (also `adapter=none`, its old name): full fine-tuning, every base parameter trains. Saved as a
whole HF model (safetensors)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from torch import nn

from mtft.adapters.base import ADAPTERS, AdapterConfig, AdapterMethod, register_adapter


@dataclass
class FullFinetuneConfig(AdapterConfig):
    name: str = "full"
    can_merge: ClassVar[bool] = True  # nothing to fold: the model is already whole
    is_full_model: ClassVar[bool] = True


def inject(model: nn.Module, cfg: FullFinetuneConfig) -> nn.Module:
    model.requires_grad_(True)
    return model


def save(model: nn.Module, directory: Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)


def load(model: nn.Module, directory: Path) -> nn.Module:
    """The saved directory is a whole HF model (sharded or not): it replaces the given base."""
    return type(model).from_pretrained(directory, dtype=next(model.parameters()).dtype)


register_adapter("full", AdapterMethod(FullFinetuneConfig, inject, save, load))
ADAPTERS.alias("none", "full")  # its name until 2026-12: configs and saved runs that say `none` still load
