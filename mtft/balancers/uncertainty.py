"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018, eq. 10 in its log-variance form): each task has a
learned log-variance s_i; the loss is Σ_i exp(−s_i)·L_i + s_i, so noisier (higher-loss) tasks weigh less.

Hyperparameter: `lr` 0.01, the step size for the s_i.
s_i enters only this term, so its gradient, ∂/∂s_i = 1 − exp(−s_i)·L_i, needs no model: the balancer takes that
SGD step itself after every optimizer step from the step's training losses, and hands exp(−s_i) to the trainer
as weights. Deviation: the trainer's reduction divides by Σ_i w_i, so only the relative weights act and the
overall loss scale (and so the effective learning rate) does not drift with the s_i.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mtft.balancers.base import Balancer, BalancerConfig, BalancerMethod, register_balancer
from mtft.errors import check


@dataclass
class UncertaintyConfig(BalancerConfig):
    name: str = "uncertainty"
    lr: float = 0.01

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")


class UncertaintyBalancer(Balancer):
    cfg: UncertaintyConfig

    def __init__(self, cfg: UncertaintyConfig, task_names: list[str]):
        super().__init__(cfg, task_names)
        self.log_variance = dict.fromkeys(task_names, 0.0)

    def weights(self) -> dict[str, float]:
        return {t: math.exp(-s) for t, s in self.log_variance.items()}

    def observe(self, step: int, train_losses: dict[str, float], val_losses: dict[str, float] | None) -> None:
        for task, loss in train_losses.items():
            s = self.log_variance[task]
            self.log_variance[task] = s - self.cfg.lr * (1 - math.exp(-s) * loss)

    def metrics(self) -> dict[str, float]:
        return {f"log_variance/{t}": s for t, s in self.log_variance.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"log_variance": dict(self.log_variance)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log_variance = dict(state["log_variance"])


register_balancer("uncertainty", BalancerMethod(UncertaintyConfig, UncertaintyBalancer))
