"""What runs a model's forwards, as one type. The step, validation and mtft-eval each take a `ModelRunner`, so none
of them asks which kind of object it was given: mtft's training `Engine` (training/engine.py) is one, and
`PlainRunner` is one for a model with no optimizer around it (a model alone, or DeepSpeed's ZeRO-3 inference
engine)."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from mtft.models import Switchable


class ModelRunner(Switchable, Protocol):
    """A model and what runs its forwards: calling the runner runs one through whatever wraps the model; `module`
    is the model itself (its config and parameters). Its mode (`training`, `train`, `eval`) is switched through
    the runner, by `eval_mode` (mtft.models), so that a wrapper around the model sees it too."""

    module: nn.Module
    device: torch.device  # where its batches go

    def __call__(self, **inputs: torch.Tensor) -> Any: ...


class PlainRunner:
    """A `ModelRunner` with no optimizer step: `outer` runs the forwards and the mode changes, either the model
    itself (`PlainRunner.alone`) or an inference wrapper around it (training/engine.py `partitioned_for_inference`)."""

    def __init__(self, outer: nn.Module, module: nn.Module, device: torch.device):
        self.outer, self.module, self.device = outer, module, device

    @classmethod
    def alone(cls, model: nn.Module) -> PlainRunner:
        """The model run as it is, where its parameters are."""
        return cls(model, model, next(model.parameters()).device)

    def __call__(self, **inputs: torch.Tensor) -> Any:
        return self.outer(**inputs)

    @property
    def training(self) -> bool:
        return self.module.training

    def train(self, mode: bool = True) -> None:
        self.outer.train(mode)

    def eval(self) -> None:
        self.outer.eval()
