"""`adapter=none`: full fine-tuning, every base parameter trains. Saved as a whole HF checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
from torch import nn

from mtft.adapters.base import AdapterConfig


@dataclass
class FullFinetuneConfig(AdapterConfig):
    name: str = "none"


def inject(model: nn.Module, cfg: FullFinetuneConfig) -> nn.Module:
    model.requires_grad_(True)
    return model


def save(model: nn.Module, directory: Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)


def load(model: nn.Module, directory: Path) -> nn.Module:
    state = safetensors.torch.load_file(str(directory / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied weights (lm_head = embed_tokens) are stored once; anything else missing is a real mismatch.
    tied = {k for k in missing if k.endswith("lm_head.weight")}
    if set(missing) - tied or unexpected:
        raise ValueError(f"{directory}: weights do not match the model (missing {missing}, unexpected {unexpected})")
    return model
