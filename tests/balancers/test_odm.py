"""ODM (balancers/odm.py): one EXP3 update against a hand computation, the exploration schedule, and resume."""

from __future__ import annotations

import math

import pytest

from mtft.balancers import build_balancer
from mtft.balancers.odm import ODMConfig
from mtft.errors import ConfigError

NAMES = ["a", "b", "c"]


def test_before_any_update_it_samples_uniformly():
    odm = build_balancer(ODMConfig(), NAMES)
    assert odm.weights() == {"a": 1.0, "b": 1.0, "c": 1.0}  # K·π with π uniform: the static mix is kept
    assert ODMConfig().apply_to == "sampling" and ODMConfig().mix_smoothing == 0.0


def test_one_update_by_hand():
    """Rewards R̂ = (1.0, 2.0, 0.5) after 9 updates. Step 10 drew n = 4 samples from p = (0.5, 0.3, 0.2) and trained
    tasks a (loss 2.0) and c (loss 3.0); b was not pulled.
      P(a pulled) = 1 - 0.5^4 = 0.9375;  R̂_a = 0.9·1.0 + 0.1·2.0/0.9375 = 1.11333...
      P(c pulled) = 1 - 0.8^4 = 0.5904;  R̂_c = 0.9·0.5 + 0.1·3.0/0.5904 = 0.95813...
      ε_10 = sqrt(ln 3 / 30) = 0.191365,  ε_11 = sqrt(ln 3 / 33) = 0.182459
      π_i = (1 - 3·ε_11)·exp(ε_10·R̂_i)/Σ_j exp(ε_10·R̂_j) + ε_11 = (0.325891, 0.352415, 0.321694)"""
    odm = build_balancer(ODMConfig(), NAMES)
    odm.load_state_dict({"rewards": [1.0, 2.0, 0.5], "updates": 9})
    odm.sampled({"a": 0.5, "b": 0.3, "c": 0.2}, draws=4)
    odm.observe(10, {"a": 2.0, "c": 3.0}, None)
    assert odm.rewards.tolist() == pytest.approx([1.1133333333, 2.0, 0.9581300813], abs=1e-9)
    pi = [w / 3 for w in odm.weights().values()]
    assert pi == pytest.approx([0.3258912129, 0.3524149297, 0.3216938574], abs=1e-9)
    assert sum(pi) == pytest.approx(1.0)
    assert odm.metrics()["epsilon"] == pytest.approx(0.1824589857, abs=1e-9)


def test_exploration_follows_the_paper_and_never_leaves_a_task_without_samples():
    odm = build_balancer(ODMConfig(), NAMES)
    assert odm.exploration(0) == odm.exploration(1) == pytest.approx(1 / 3)  # pure exploration until t > K ln K
    assert odm.exploration(100) == pytest.approx(math.sqrt(math.log(3) / 300))
    odm.load_state_dict({"rewards": [1e6, 0.0, 0.0], "updates": 100})  # one task's reward dominates
    pi = [w / 3 for w in odm.weights().values()]
    assert min(pi) == pytest.approx(odm.exploration(101))  # the others keep ε
    assert math.isfinite(sum(pi))


def test_a_non_finite_loss_moves_no_reward_and_the_state_resumes_exactly():
    odm = build_balancer(ODMConfig(), NAMES)
    odm.sampled({"a": 0.4, "b": 0.4, "c": 0.2}, draws=8)
    odm.observe(1, {"a": float("nan"), "b": 1.5}, None)
    assert odm.rewards[0] == 0.0 and odm.rewards[1] > 0.0
    again = build_balancer(ODMConfig(), NAMES)
    again.load_state_dict(odm.state_dict())
    assert again.weights() == odm.weights() and again.updates == odm.updates == 1


def test_alpha_is_checked():
    with pytest.raises(ConfigError, match="alpha"):
        ODMConfig(alpha=1.0)
