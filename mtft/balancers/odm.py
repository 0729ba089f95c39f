"""ODM: online data mixing as a multi-armed bandit (Albalak et al., "Efficient Online Data Mixing for Language
Model Pre-Training", arXiv 2312.02406, Algorithm 1): EXP3 over the tasks, rewarded by each task's training loss.

Hyperparameters (the paper's): `alpha` 0.9, the smoothing of the estimated rewards; the exploration rate is
ε_t = min(1/K, sqrt(ln K / (K·t))) for K tasks, with no setting.

After update t, with R̂ the estimated rewards:
    π_{t+1,i} = (1 − K·ε_{t+1}) · exp(ε_t·R̂_i) / Σ_j exp(ε_t·R̂_j) + ε_{t+1}       (ε_0 = 1/K: π_1 is uniform)
and a pulled task i with loss L_i updates R̂_i ← α·R̂_i + (1 − α)·L_i / P(i pulled).

ODM pulls one arm per batch, so P(i pulled) = π_i there. mtft draws a task per sample: a step of n draws from the
mix p pulls task i with probability 1 − (1 − p_i)^n, and that is its importance weight, so a task's reward is
its loss in expectation, as in the paper. p is the mix the step's samples were drawn with, which the loop hands
over (`sampled`): ODM's own π, moved by the floor or by a static base mix, and the static mix itself when ODM
drives only the loss.

It samples by default (`apply_to=sampling`), with no smoothing of the mix (`mix_smoothing=0`): EXP3 smooths its
rewards already. Its weights are K·π (mean 1), so the mix p ∝ p_mix·π is π itself over a uniform static mix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtft.balancers.base import Balancer, BalancerConfig, BalancerMethod, register_balancer
from mtft.errors import check


@dataclass
class ODMConfig(BalancerConfig):
    name: str = "odm"
    apply_to: str = "sampling"
    mix_smoothing: float = 0.0
    alpha: float = 0.9  # smoothing of the estimated rewards (the paper's α)

    def __post_init__(self) -> None:
        check(0.0 <= self.alpha < 1.0, "alpha", f"must be in [0, 1), got {self.alpha}")


class ODMBalancer(Balancer):
    cfg: ODMConfig

    def __init__(self, cfg: ODMConfig, task_names: list[str]):
        super().__init__(cfg, task_names)
        self.rewards = np.zeros(len(task_names))  # R̂
        self.updates = 0  # t
        self.mix: dict[str, float] = {}  # what the step about to be observed was drawn with
        self.draws = 0

    def exploration(self, t: int) -> float:
        """ε_t = min(1/K, sqrt(ln K / (K·t))); ε_0 = 1/K."""
        k = len(self.task_names)
        return 1.0 / k if t == 0 else min(1.0 / k, math.sqrt(math.log(k) / (k * t)))

    def policy(self) -> np.ndarray:
        """π for the next step's draws (task order)."""
        k, t = len(self.task_names), self.updates
        scaled = self.exploration(t) * self.rewards
        exp = np.exp(scaled - scaled.max())
        eps = self.exploration(t + 1)
        return (1.0 - k * eps) * exp / exp.sum() + eps

    def weights(self) -> dict[str, float]:
        k = len(self.task_names)
        return {t: float(k * p) for t, p in zip(self.task_names, self.policy(), strict=True)}

    def sampled(self, mix: dict[str, float], draws: int) -> None:
        self.mix, self.draws = dict(mix), draws

    def observe(self, step: int, train_losses: dict[str, float], val_losses: dict[str, float] | None) -> None:
        """Every task in the step was pulled: its reward moves towards its loss over the chance it was pulled."""
        alpha = self.cfg.alpha
        for i, task in enumerate(self.task_names):
            loss = train_losses.get(task)
            if loss is None or not math.isfinite(loss):
                continue
            p = self.mix.get(task, 1.0 / len(self.task_names))
            pulled = 1.0 - (1.0 - p) ** max(self.draws, 1)
            self.rewards[i] = alpha * self.rewards[i] + (1.0 - alpha) * loss / max(pulled, 1e-12)
        self.updates += 1

    def metrics(self) -> dict[str, float]:
        rewards = {f"reward/{t}": float(r) for t, r in zip(self.task_names, self.rewards, strict=True)}
        return {**rewards, "epsilon": self.exploration(self.updates + 1)}

    def state_dict(self) -> dict[str, Any]:
        return {"rewards": self.rewards.tolist(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rewards = np.asarray(state["rewards"], dtype=np.float64)
        self.updates = state["updates"]


register_balancer("odm", BalancerMethod(ODMConfig, ODMBalancer))
