"""DWA, Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019, "End-to-End Multi-Task Learning with
Attention", eq. 7): a task whose loss has stopped falling gets more weight, from training losses alone.

Hyperparameters: `temperature` T = 2 (as in the paper), `window` 20 optimizer steps (our unit of the paper's
epoch: per-step losses are too noisy). With L̄_i(k) the mean training loss of task i over window k,
r_i = L̄_i(k−1) / L̄_i(k−2) and w_i = N·exp(r_i/T) / Σ_j exp(r_j/T). Uniform until two windows are complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mtft.balancers.base import Balancer, BalancerConfig, BalancerMethod, register_balancer
from mtft.errors import check


@dataclass
class DWAConfig(BalancerConfig):
    name: str = "dwa"
    temperature: float = 2.0
    window: int = 20

    def __post_init__(self) -> None:
        check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        check(self.window > 0, "window", f"must be > 0, got {self.window}")


class DWABalancer(Balancer):
    cfg: DWAConfig

    def __init__(self, cfg: DWAConfig, task_names: list[str]):
        super().__init__(cfg, task_names)
        self.sums = dict.fromkeys(task_names, 0.0)  # the current window's loss sums and counts
        self.counts = dict.fromkeys(task_names, 0)
        self.means: list[dict[str, float]] = []  # the last two complete windows' mean losses
        self.steps = 0
        self._weights = dict.fromkeys(task_names, 1.0)

    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    def observe(self, step: int, train_losses: dict[str, float], val_losses: dict[str, float] | None) -> None:
        if not train_losses:
            return
        for task, loss in train_losses.items():
            self.sums[task] += loss
            self.counts[task] += 1
        self.steps += 1
        if self.steps % self.cfg.window:
            return
        means = {t: self.sums[t] / self.counts[t] for t in self.task_names if self.counts[t]}
        self.means = [*self.means, means][-2:]
        self.sums, self.counts = dict.fromkeys(self.task_names, 0.0), dict.fromkeys(self.task_names, 0)
        if len(self.means) == 2:
            older, newer = self.means
            ratios = np.array([newer.get(t, 1.0) / older[t] if older.get(t) else 1.0 for t in self.task_names])
            logits = ratios / self.cfg.temperature
            weights = len(ratios) * np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
            self._weights = {t: float(w) for t, w in zip(self.task_names, weights, strict=True)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "sums": self.sums,
            "counts": self.counts,
            "means": self.means,
            "steps": self.steps,
            "weights": self._weights,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])
        self.means, self.steps, self._weights = list(state["means"]), state["steps"], dict(state["weights"])


register_balancer("dwa", BalancerMethod(DWAConfig, DWABalancer))
