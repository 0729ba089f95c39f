"""uniform, data_balanced and static: three different reductions of the same per-task losses."""

from __future__ import annotations

import pytest
import torch

from mtft.balancers import BALANCERS, build_balancer
from mtft.training.losses import balanced_loss

SUMS = torch.tensor([4.0, 9.0])  # task a: 2 tokens at mean 2.0; task b: 9 tokens at mean 1.0
COUNTS = torch.tensor([2.0, 9.0])


def reduce(name: str, **cfg) -> float:
    balancer = build_balancer(BALANCERS[name].config(**cfg), ["a", "b"])
    weights = torch.tensor([balancer.weights()[t] for t in ("a", "b")])
    return float(balanced_loss(SUMS, COUNTS, balancer.reduction(weights, COUNTS)))


def test_uniform_is_the_plain_token_mean():
    assert reduce("uniform") == pytest.approx((4 + 9) / (2 + 9))


def test_data_balanced_gives_each_task_an_equal_share():
    assert reduce("data_balanced") == pytest.approx((2.0 + 1.0) / 2)


def test_static_scales_the_data_balanced_shares():
    assert reduce("static", weights={"a": 3.0}) == pytest.approx((3 * 2.0 + 1 * 1.0) / 4)
    assert reduce("static", weights={"a": 0.0}) == pytest.approx(1.0)
