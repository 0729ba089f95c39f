"""Plain LoRA through PEFT: the baseline every other adapter is measured against. Saved in PEFT format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import peft
from torch import nn

from mtft.adapters.base import AdapterConfig
from mtft.config.schema import check


@dataclass
class LoraConfig(AdapterConfig):
    name: str = "lora"
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"  # module names, or every Linear except the output head

    def __post_init__(self) -> None:
        check(self.rank > 0, "rank", f"must be > 0, got {self.rank}")
        check(self.alpha > 0, "alpha", f"must be > 0, got {self.alpha}")
        check(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")
        check(len(self.target_modules) > 0, "target_modules", "name at least one module, or 'all-linear'")


def inject(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    target = cfg.target_modules if isinstance(cfg.target_modules, str) else list(cfg.target_modules)
    peft_cfg = peft.LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=target, task_type="CAUSAL_LM"
    )
    return peft.get_peft_model(model, peft_cfg)


def save(model: nn.Module, directory: Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)


def load(model: nn.Module, directory: Path) -> nn.Module:
    return peft.PeftModel.from_pretrained(model, directory)
