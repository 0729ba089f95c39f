"""The balancer interface: a balancer receives per-task losses and gives back per-task loss weights.

It owns its schedule, and the trainer knows nothing of it beyond these methods (it never branches on which
balancer it runs):
- `start(L0)` once, with the full validation pass before training (L(0) for convergence-based balancers);
- `val_request(step)` after every optimizer step: how many validation micro-batches (of `val_batch_size`
  samples) it wants measured now, 0 for none. A full evaluation at the same step serves instead;
- `observe(step, train_losses, val_losses)` after every applied step;
- `after_step(measure)` after that: `measure()` re-evaluates the step's own batches after the update, one more
  forward, run only if the balancer calls it (FAMO does);
- `weights()`, and `reduction(weights, counts)`: the w_t that enter the loss's reduction (training/losses.py);
- `sampled(mix, draws)` before `observe`: the task probabilities the step's samples were drawn with, and how many
  were drawn (all ranks), for a balancer that must correct for what it was shown (ODM's importance weights).

Where the weights go, the loss, the sampler or both (`apply_to`), is the loop's wiring (training/weight_routes.py),
never the balancer's business: every balancer can drive the sampler, with no code of its own for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from mtft.errors import ConfigError, check, check_choice
from mtft.registry import Registry

APPLY_TO = ("loss", "sampling", "both")


@dataclass
class BalancerConfig:
    name: str = ""
    # where the weights go: loss (the loss's reduction), sampling (the task probabilities, p ∝ p_mix·w, with the
    # plain token-mean loss), or both
    apply_to: str = "loss"
    # with sampling: every task keeps at least this fraction of its static share (data.mixing) of the samples
    mix_floor: float = 0.1
    # with sampling: p ← β·p + (1 − β)·target after each step, β = mix_smoothing (0: follow the weights at once)
    mix_smoothing: float = 0.9

    def check_tasks(self, task_names: list[str]) -> None:
        """Cross-check against the data config; raise ConfigError naming the key."""

    def check_routing(self) -> None:
        """apply_to and the mix's settings (every balancer has them; checked once, by TrainConfig)."""
        check_choice(self.apply_to, "balancer.apply_to", APPLY_TO)
        check(0.0 <= self.mix_floor < 1.0, "balancer.mix_floor", f"must be in [0, 1), got {self.mix_floor}")
        smoothing = self.mix_smoothing
        check(0.0 <= smoothing < 1.0, "balancer.mix_smoothing", f"must be in [0, 1), got {smoothing}")

    @property
    def to_loss(self) -> bool:
        return self.apply_to in ("loss", "both")

    @property
    def to_sampling(self) -> bool:
        return self.apply_to in ("sampling", "both")


class Balancer:
    def __init__(self, cfg: BalancerConfig, task_names: list[str]):
        self.cfg = cfg
        self.task_names = list(task_names)

    def start(self, initial_val_losses: dict[str, float]) -> None:
        """Before the first step: every task's validation loss on its whole validation split."""

    def val_request(self, step: int) -> int:
        """Validation micro-batches to measure after optimizer step `step`; 0: none."""
        return 0

    def val_batch_size(self, default: int) -> int:
        """Samples per requested validation micro-batch; `default` is trainer.eval_batch_size."""
        return default

    def weights(self) -> dict[str, float]:
        raise NotImplementedError

    def reduction(self, weights: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """The w_t of the reduction Σ_t w_t·L_t / Σ_t w_t, from the weights (in task order) and each task's
        completion tokens in the step. The weights themselves unless a balancer says otherwise."""
        return weights

    def observe(self, step: int, train_losses: dict[str, float], val_losses: dict[str, float] | None) -> None:
        """Feed the losses of optimizer step `step`. Tasks absent from the step are absent from the dicts."""

    def sampled(self, mix: dict[str, float], draws: int) -> None:
        """Before `observe`: the step's samples were `draws` draws (all ranks) from the task probabilities `mix`."""

    def after_step(self, measure: Callable[[], dict[str, float]]) -> None:
        """The post-step hook; `measure()` gives the per-task losses of the step's own batches after its update."""

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


class BalancerMethod(NamedTuple):
    config: type[BalancerConfig]
    balancer: type[Balancer]


# Every balancer's module registers itself here when imported; `mtft.balancers` imports them all.
BALANCERS: Registry[BalancerMethod] = Registry("balancer")
register_balancer = BALANCERS.register


def is_adaptive(method: BalancerMethod) -> bool:
    """Whether its weights follow the losses: it overrides `observe` or `after_step`, the only ways they reach it."""
    return any(getattr(method.balancer, hook) is not getattr(Balancer, hook) for hook in ("observe", "after_step"))
