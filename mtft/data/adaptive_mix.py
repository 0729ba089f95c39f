"""Sampling probabilities that follow a balancer's weights (`balancer.apply_to=sampling|both`).

p ∝ p_mix · w: the static mixing (`data.mixing`) times the weights, normalised; then held at or above a floor of
`mix_floor` times each task's static share, so that no task starves however low its weight falls (a task the
static mix gives 0 stays at 0); then smoothed, p ← β·p + (1 − β)·target with β = `mix_smoothing`, so that a noisy
weight (CoBa's swing several-fold between rounds on short runs) moves the mix gradually instead of thrashing it.
Weights of 1 give back the static mix, so before a balancer's first update nothing changes.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class AdaptiveMix:
    def __init__(self, static: np.ndarray, floor: float, smoothing: float):
        self.static = np.asarray(static, dtype=np.float64)
        self.floor, self.smoothing = floor, smoothing
        self.current = self.static.copy()

    def follow(self, weights: np.ndarray) -> np.ndarray:
        """The mix after the balancer's weights (task order) moved it one step."""
        target = floored(target_mix(self.static, weights), self.floor * self.static)
        self.current = self.smoothing * self.current + (1.0 - self.smoothing) * target
        self.current /= self.current.sum()  # exact again after rounding
        return self.current

    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current = np.asarray(state["current"], dtype=np.float64)


def target_mix(static: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """p ∝ p_mix · w; the static mix where the weights give no task any mass (all 0, or not finite)."""
    raw = static * np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(raw)) or raw.sum() <= 0:
        return static.copy()
    return raw / raw.sum()


def floored(p: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """The distribution nearest `p` in ratio with every p_i >= floor_i (Σ floor < 1): tasks below the floor are set
    to it, and the rest share what is left in their old proportions; repeated until none is below (at most once a
    task)."""
    pinned = np.zeros(len(p), dtype=bool)
    out = p.copy()
    for _ in range(len(p)):
        below = (out < floor) & ~pinned
        if not below.any():
            break
        pinned |= below
        free = p[~pinned]
        out = np.where(pinned, floor, 0.0)
        if free.sum() > 0:
            out[~pinned] = free / free.sum() * (1.0 - floor[pinned].sum())
    return out
