"""Plain LoRA through PEFT: the baseline every other adapter is measured against. Saved in PEFT format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import peft
from torch import nn

from mtft.adapters.base import AdapterMethod, LowRankConfig, lora_parameters, register_adapter
from mtft.errors import check


@dataclass
class LoraConfig(LowRankConfig):
    name: str = "lora"
    can_merge: ClassVar[bool] = True
    is_baseline: ClassVar[bool] = True
    rank: int = 16

    @classmethod
    def at_lora_budget(
        cls, rank: int, alpha: float, shapes: list[tuple[int, int]], settings: dict[str, Any] | None = None
    ) -> LoraConfig:
        return cls(rank=rank, alpha=alpha, **(settings or {}))

    def layer_parameters(self, in_features: int, out_features: int) -> int:
        return lora_parameters(self.rank, [(in_features, out_features)])

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.rank > 0, "rank", f"must be > 0, got {self.rank}")


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


register_adapter("lora", AdapterMethod(LoraConfig, inject, save, load))
