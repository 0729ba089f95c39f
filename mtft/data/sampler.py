"""Which task, and which of its samples, comes next: mixing probabilities and a resumable sampler."""

from __future__ import annotations

from typing import Any

import numpy as np

from mtft.data.config import DataConfig


def mixing_probabilities(sizes: list[int], cfg: DataConfig) -> np.ndarray:
    """natural: p ∝ n; uniform: p = 1/T; temperature: p ∝ n^(1/T); weights: p ∝ task.weight."""
    n = np.asarray(sizes, dtype=np.float64)
    if cfg.mixing == "natural":
        raw = n
    elif cfg.mixing == "uniform":
        raw = np.ones_like(n)
    elif cfg.mixing == "temperature":
        raw = n ** (1.0 / cfg.temperature)
    else:
        raw = np.array([t.weight for t in cfg.tasks], dtype=np.float64)
    return raw / raw.sum()


class TaskSampler:
    """Draws (task, sample index) pairs: the task by its mixing probability, the sample without replacement.

    Each task walks its own permutation, reshuffled (seeded by task and pass) each time it is exhausted.
    The state is a few integers and the RNG state, so a resumed run draws exactly what an unbroken one would.
    """

    def __init__(self, sizes: list[int], probabilities: np.ndarray, seed: int):
        self.sizes = list(sizes)
        self.probabilities = np.asarray(probabilities)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.passes = [0] * len(sizes)
        self.cursors = [0] * len(sizes)
        self._orders = [self._order(t) for t in range(len(sizes))]

    def _order(self, task: int) -> np.ndarray:
        return np.random.default_rng([self.seed, task, self.passes[task]]).permutation(self.sizes[task])

    def draw(self, count: int) -> list[tuple[int, int]]:
        tasks = self.rng.choice(len(self.sizes), size=count, p=self.probabilities)
        return [(int(t), self._next_index(int(t))) for t in tasks]

    def _next_index(self, task: int) -> int:
        if self.cursors[task] == self.sizes[task]:
            self.passes[task] += 1
            self.cursors[task] = 0
            self._orders[task] = self._order(task)
        self.cursors[task] += 1
        return int(self._orders[task][self.cursors[task] - 1])

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "sizes": list(self.sizes),
            "rng": self.rng.bit_generator.state,
            "passes": list(self.passes),
            "cursors": list(self.cursors),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed or list(state["sizes"]) != self.sizes:
            raise ValueError(
                f"sampler state is for seed {state['seed']} and task sizes {state['sizes']}, but this run has seed "
                f"{self.seed} and sizes {self.sizes}: resume with the same trainer.seed and data"
            )
        self.rng.bit_generator.state = state["rng"]
        self.passes, self.cursors = list(state["passes"]), list(state["cursors"])
        self._orders = [self._order(t) for t in range(len(self.sizes))]
