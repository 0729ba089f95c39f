"""FAMO: Fast Adaptive Multitask Optimization (Liu et al., NeurIPS 2023), one loss evaluation per task per step.

Hyperparameters (the paper's): `lr` 0.025 and `weight_decay` 0.001 (Adam on the task logits ξ), `min_loss` 0
(ℓ*, a lower bound on every task loss).

FAMO minimises Σ_i z_i·log(ℓ_i − ℓ*)/c with z = softmax(ξ) and c = Σ_i z_i/(ℓ_i − ℓ*). Its gradient is our
reduction Σ w_i·∇ℓ_i / Σ w_i with w_i = z_i/(ℓ_i − ℓ*): those are the weights handed to the trainer.
After each optimizer step the trainer re-evaluates the same micro-batches without gradients (the cost: one
extra forward pass per step) and calls `after_step`; with δ_i = log(ℓ_i,before − ℓ*) − log(ℓ_i,after − ℓ*),
ξ takes an Adam step along the gradient of z with respect to ξ, applied to δ.
Deviation: w_i uses the losses measured in the previous step (the current ones are not known before the
forward), which the paper's update direction approximates for small steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mtft.balancers.base import Balancer, BalancerConfig, BalancerMethod, register_balancer
from mtft.errors import check


@dataclass
class FAMOConfig(BalancerConfig):
    name: str = "famo"
    lr: float = 0.025
    weight_decay: float = 0.001
    min_loss: float = 0.0

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")


class FAMOBalancer(Balancer):
    cfg: FAMOConfig

    def __init__(self, cfg: FAMOConfig, task_names: list[str]):
        super().__init__(cfg, task_names)
        self.logits = torch.zeros(len(task_names), requires_grad=True)
        self.optimizer = torch.optim.Adam([self.logits], lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.before: dict[str, float] = {}  # the step's losses before its update

    def weights(self) -> dict[str, float]:
        z = torch.softmax(self.logits.detach(), dim=0)
        n = len(self.task_names)
        shifted = {t: self.before.get(t, 1.0 + self.cfg.min_loss) - self.cfg.min_loss for t in self.task_names}
        raw = {t: float(z[i]) / max(shifted[t], 1e-8) for i, t in enumerate(self.task_names)}
        total = sum(raw.values())
        return {t: n * w / total for t, w in raw.items()}  # mean 1, for logging; the scale cancels in the loss

    def observe(self, step: int, train_losses: dict[str, float], val_losses: dict[str, float] | None) -> None:
        self.before = dict(train_losses) or self.before

    def after_step(self, measure: Callable[[], dict[str, float]]) -> None:
        """ξ update from how much each task's loss fell on the batch it was trained on (FAMO eq. 9)."""
        after = measure()
        delta = torch.zeros(len(self.task_names))
        for i, task in enumerate(self.task_names):
            if task in after and task in self.before:
                floor = self.cfg.min_loss
                delta[i] = torch.tensor(self.before[task] - floor).log() - torch.tensor(after[task] - floor).log()
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(torch.softmax(self.logits, dim=0), self.logits, grad_outputs=delta)
        self.optimizer.zero_grad()
        self.logits.grad = grad
        self.optimizer.step()

    def metrics(self) -> dict[str, float]:
        z = torch.softmax(self.logits.detach(), dim=0)
        return {f"z/{t}": float(z[i]) for i, t in enumerate(self.task_names)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "logits": self.logits.detach().clone(),
            "optimizer": self.optimizer.state_dict(),
            "before": self.before,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.logits.copy_(state["logits"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.before = dict(state["before"])


register_balancer("famo", BalancerMethod(FAMOConfig, FAMOBalancer))
