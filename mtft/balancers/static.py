"""Fixed weightings, three clearly different ones (MFTCoder's cases 1 and 3, and explicit weights).

The trainer's reduction is Σ_t w_t·L_t / Σ_t w_t over the tasks present in the optimizer step, where L_t is
task t's mean token loss over the step.
- `uniform`: every completion token counts the same, whatever its task (w_t = N_t, the task's tokens in the
  step), so the loss is the plain token mean and large or long-answer tasks dominate. MFTCoder case 1.
- `data_balanced` (default): every task present in the step gets an equal share (w_t = 1). MFTCoder case 3.
- `static`: the data-balanced reduction with per-task weights from the config. A weight of 0 takes a task out of
  the gradient; it is still sampled, logged and validated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtft.balancers.base import Balancer, BalancerConfig, BalancerMethod, check_known_tasks, register_balancer
from mtft.errors import check


@dataclass
class UniformConfig(BalancerConfig):
    name: str = "uniform"


class UniformBalancer(Balancer):
    def weights(self) -> dict[str, float]:
        return dict.fromkeys(self.task_names, 1.0)

    def reduction(self, weights: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """w_t = N_t: Σ_t N_t·L_t / Σ_t N_t = Σ_t S_t / Σ_t N_t, the plain token mean."""
        return weights * counts


@dataclass
class DataBalancedConfig(BalancerConfig):
    name: str = "data_balanced"


class DataBalancedBalancer(Balancer):
    def weights(self) -> dict[str, float]:
        return dict.fromkeys(self.task_names, 1.0)


@dataclass
class StaticConfig(BalancerConfig):
    name: str = "static"
    # task -> weight; tasks not listed get 1.0. (None rather than {} so Hydra can replace it with an override.)
    weights: dict[str, float] | None = None

    def __post_init__(self) -> None:
        self.weights = self.weights or {}
        for task, weight in self.weights.items():
            check(weight >= 0, f"weights.{task}", f"must be >= 0, got {weight}")

    def check_tasks(self, task_names: list[str]) -> None:
        check_known_tasks(list(self.weights), task_names, "balancer.weights")
        total = sum(self.weights.get(t, 1.0) for t in task_names)
        check(total > 0, "balancer.weights", "every task has weight 0: nothing would train")


class StaticBalancer(Balancer):
    cfg: StaticConfig

    def weights(self) -> dict[str, float]:
        return {t: self.cfg.weights.get(t, 1.0) for t in self.task_names}


register_balancer("uniform", BalancerMethod(UniformConfig, UniformBalancer))
register_balancer("data_balanced", BalancerMethod(DataBalancedConfig, DataBalancedBalancer))
register_balancer("static", BalancerMethod(StaticConfig, StaticBalancer))
