"""Where a balancer's weights go (`balancer.apply_to`): to the loss's reduction, to the sampler's task
probabilities, or to both. The loop's wiring, kept out of every balancer, so each one drives either with no code of
its own.

- `loss` (the default): the weights and the balancer's reduction enter the loss; the sampler keeps the static mix.
- `sampling`: the weights move the mix (data/adaptive_mix.py) after every applied step, and the loss is the plain
  token mean, so a task's share of the gradient follows its share of the samples (a data-balanced reduction would
  give every task present an equal share again, cancelling most of what the sampler did).
- `both`: the weights move the mix and enter the loss as with `loss`.

A new mix starts at the furthest round of shared draws any rank has used up (the step's all-reduce carries each
rank's count), so every rank draws each round with the same probabilities, and none changes mid-way through what
it has drawn.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mtft.balancers import Balancer, BalancerConfig
from mtft.data.adaptive_mix import AdaptiveMix
from mtft.data.batches import MixedBatches


class WeightRoutes:
    def __init__(
        self, balancer: Balancer, cfg: BalancerConfig, batches: MixedBatches, static: np.ndarray, names: list[str]
    ):
        self.balancer, self.batches, self.names = balancer, batches, names
        self.to_loss, self.to_sampling = cfg.to_loss, cfg.to_sampling
        self.mix = AdaptiveMix(static, cfg.mix_floor, cfg.mix_smoothing)

    def loss_weights(self) -> dict[str, float]:
        """The weights the step's loss takes, by task: the balancer's, or all 1 when they only drive the sampler."""
        return self.balancer.weights() if self.to_loss else dict.fromkeys(self.names, 1.0)

    def reduction(self, weights: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """The balancer's reduction, or the token mean's (w_t = N_t) when its weights only drive the sampler."""
        return self.balancer.reduction(weights, counts) if self.to_loss else weights * counts

    def mix_in_effect(self) -> dict[str, float]:
        """The task probabilities of the rounds about to be drawn (the newest mix)."""
        return dict(zip(self.names, self.batches.sampler.probabilities.tolist(), strict=True))

    def follow_weights(self, rounds: int) -> None:
        """After the balancer's update: the mix moves by its weights, from round `rounds` on (the furthest any rank
        has used up). Called on every rank with the same weights and rounds."""
        if self.to_sampling:
            weights = self.balancer.weights()
            p = self.mix.follow(np.array([weights[n] for n in self.names]))
            self.batches.follow(p, rounds)

    def state_dict(self) -> dict[str, Any]:
        return self.mix.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mix.load_state_dict(state)
