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
    """Draws (task, sample index) pairs, a round of draws at a time: the task by its mixing probability, the sample
    without replacement.

    Each task walks its own permutation, reshuffled (seeded by task and pass) each time it is exhausted.
    The probabilities belong to rounds, not to moments: `follow(p, from_round)` makes p the mix of every round from
    `from_round` on. Every rank runs the same sampler and takes its slot of each round, so as long as each round has
    one mix on every rank, the ranks draw one stream between them, however fast each uses up its rounds (packing).
    The state is a few integers, the RNG state and the mixes still to come, so a resumed run draws exactly what an
    unbroken one would.
    """

    def __init__(self, sizes: list[int], probabilities: np.ndarray, seed: int):
        self.sizes = list(sizes)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.passes = [0] * len(sizes)
        self.cursors = [0] * len(sizes)
        self.rounds = 0  # rounds drawn so far
        self.schedule: list[tuple[int, np.ndarray]] = [(0, np.asarray(probabilities, dtype=np.float64))]
        self._orders = [self._order(t) for t in range(len(sizes))]

    @property
    def probabilities(self) -> np.ndarray:
        """The newest mix: the one the rounds after every round drawn so far (on any rank) will use."""
        return self.schedule[-1][1]

    def follow(self, probabilities: np.ndarray, from_round: int) -> None:
        """Draw rounds `from_round` on with `probabilities`. Never a round already drawn here: the caller keys it to
        the furthest round any rank has drawn, plus one."""
        if from_round < self.rounds or from_round < self.schedule[-1][0]:
            raise ValueError(f"mix for round {from_round}, but round {max(self.rounds, self.schedule[-1][0])} is past")
        p = np.asarray(probabilities, dtype=np.float64)
        if self.schedule[-1][0] == from_round:
            self.schedule[-1] = (from_round, p)
        else:
            self.schedule.append((from_round, p))

    def _mix(self) -> np.ndarray:
        """The mix of the round about to be drawn; mixes of rounds behind it are dropped."""
        while len(self.schedule) > 1 and self.schedule[1][0] <= self.rounds:
            self.schedule.pop(0)
        return self.schedule[0][1]

    def _order(self, task: int) -> np.ndarray:
        return np.random.default_rng([self.seed, task, self.passes[task]]).permutation(self.sizes[task])

    def draw(self, count: int) -> list[tuple[int, int]]:
        """One round: `count` draws (one per rank)."""
        tasks = self.rng.choice(len(self.sizes), size=count, p=self._mix())
        self.rounds += 1
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
            "rounds": self.rounds,
            "schedule": [[start, p.tolist()] for start, p in self.schedule],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A state saved before mixes followed rounds (2026-12) keeps this run's static mix."""
        if state["seed"] != self.seed or list(state["sizes"]) != self.sizes:
            raise ValueError(
                f"sampler state is for seed {state['seed']} and task sizes {state['sizes']}, but this run has seed "
                f"{self.seed} and sizes {self.sizes}: resume with the same trainer.seed and data"
            )
        self.rng.bit_generator.state = state["rng"]
        self.passes, self.cursors = list(state["passes"]), list(state["cursors"])
        self.rounds = state.get("rounds", 0)
        if "schedule" in state:
            self.schedule = [(start, np.asarray(p, dtype=np.float64)) for start, p in state["schedule"]]
        self._orders = [self._order(t) for t in range(len(self.sizes))]
