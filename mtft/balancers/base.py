"""The balancer interface: a balancer receives per-task losses and gives back per-task loss weights.

The trainer calls `observe(0, {}, L0)` once with the full validation pass before training, then after every
optimizer step with that step's per-task training losses, and with per-task validation losses whenever it
computed them (every `val_interval` steps on `val_batches` micro-batches if `needs_val_losses`).
It never branches on which balancer it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mtft.errors import ConfigError


@dataclass
class BalancerConfig:
    name: str = ""

    def check_tasks(self, task_names: list[str]) -> None:
        """Cross-check against the data config; raise ConfigError naming the key."""


class Balancer:
    needs_val_losses: ClassVar[bool] = False
    val_interval: int = 0  # optimizer steps between validation losses, when needs_val_losses
    val_batches: int = 0  # validation micro-batches per such round
    val_batch_size: int = 0  # their size in samples; 0 uses trainer.eval_batch_size
    token_weighted: ClassVar[bool] = False  # True: each weight is multiplied by the task's tokens in the step
    needs_post_step_losses: ClassVar[bool] = False  # True: after_step gets the step's batch re-evaluated

    def __init__(self, cfg: BalancerConfig, task_names: list[str]):
        self.cfg = cfg
        self.task_names = list(task_names)

    def weights(self) -> dict[str, float]:
        raise NotImplementedError

    def observe(self, step: int, train_losses: dict[str, float], val_losses: dict[str, float] | None) -> None:
        """Feed the losses of optimizer step `step`. Tasks absent from the step are absent from the dicts."""

    def after_step(self, losses_after: dict[str, float]) -> None:
        """The post-step hook: per-task losses of the step's own micro-batches after its update."""

    def metrics(self) -> dict[str, float]:
        """Internals to log under `balancer/...` (without the prefix)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def check_known_tasks(names: list[str], task_names: list[str], key: str) -> None:
    for name in names:
        if name not in task_names:
            raise ConfigError(f"{key}.{name}", f"no task is named '{name}'; the tasks are {', '.join(task_names)}")
