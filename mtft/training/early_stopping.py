"""Early stopping and the best checkpoint (trainer.early_stopping_patience, trainer.keep_best): which evaluation was
the best so far, and how many have passed since. Its state is in every checkpoint, so a resumed run stops where the
unbroken one would have."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class EarlyStopping:
    metric: str = "val_loss"  # the tasks' mean validation loss (lower is better), or TASK/METRIC (higher is better)
    patience: int = 0  # evaluations without improvement before the run stops; 0 never stops
    min_delta: float = 0.0  # an improvement must exceed it
    best_value: float | None = None
    best_step: int | None = None
    since_best: int = 0

    def value(self, val_losses: dict[str, float], generation_scores: dict[str, dict[str, float]]) -> float:
        if self.metric == "val_loss":
            finite = [v for v in val_losses.values() if math.isfinite(v)]
            return sum(finite) / len(finite) if finite else math.nan
        task, name = self.metric.split("/", 1)
        return generation_scores.get(task, {}).get(name, math.nan)

    def observe(self, step: int, val_losses: dict[str, float], generation_scores: dict[str, dict[str, float]]) -> None:
        """One evaluation. A non-finite value is never an improvement."""
        value = self.value(val_losses, generation_scores)
        sign = 1.0 if self.metric != "val_loss" else -1.0
        better = self.best_value is None or sign * (value - self.best_value) > self.min_delta
        if math.isfinite(value) and better:
            self.best_value, self.best_step, self.since_best = value, step, 0
        else:
            self.since_best += 1

    def should_stop(self) -> bool:
        return self.patience > 0 and self.since_best >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_step": self.best_step, "since_best": self.since_best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_value, self.best_step, self.since_best = state["best_value"], state["best_step"], state["since_best"]
