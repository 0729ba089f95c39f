"""CoBa on synthetic validation-loss curves (no model): each assert checks a direction or value of the paper's
formulas that a wrong sign or normalisation would break."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mtft.balancers.coba import (
    CoBaBalancer,
    CoBaConfig,
    absolute_convergence,
    coba_weights,
    divergence_factor,
    ols_slope,
    relative_convergence,
)

TASKS = ["fast", "slow"]


def run(curves: dict[str, callable], steps: int, **cfg) -> CoBaBalancer:
    """Feed L(0) = 1 for each task, then curves(step) every step."""
    balancer = CoBaBalancer(CoBaConfig(**{"warmup_steps": 10, "history": 50, **cfg}), list(curves))
    balancer.start(dict.fromkeys(curves, 1.0))
    for step in range(1, steps + 1):
        losses = {t: f(step) for t, f in curves.items() if f(step) is not None}
        balancer.observe(step, {}, losses)
    return balancer


def test_ols_slope_is_exact_on_a_line_and_ignores_order():
    assert ols_slope([(1, 3.0), (2, 5.0), (4, 9.0)]) == pytest.approx(2.0)
    assert ols_slope([(4, 9.0), (1, 3.0), (2, 5.0)]) == pytest.approx(2.0)
    assert ols_slope([(3, 1.0)]) == 0.0


def test_weights_are_uniform_before_warmup():
    balancer = run({"fast": lambda s: math.exp(-0.2 * s), "slow": lambda s: 1 - 0.001 * s}, steps=9)
    assert balancer.weights() == {"fast": 1.0, "slow": 1.0}
    assert balancer.metrics() == {}


def test_the_slower_converging_task_gets_more_weight():
    balancer = run({"fast": lambda s: 1 - 0.01 * s, "slow": lambda s: 1 - 0.001 * s}, steps=40)
    weights = balancer.weights()
    assert weights["slow"] > weights["fast"]
    assert balancer.metrics()["rcs/slow"] > balancer.metrics()["rcs/fast"]
    assert sum(weights.values()) == pytest.approx(2.0)  # reported with mean 1


def test_relative_convergence_by_hand():
    slopes = np.array([-0.3, -0.1])
    expected = np.exp(2 * slopes / 0.4) / np.exp(2 * slopes / 0.4).sum()
    np.testing.assert_allclose(relative_convergence(slopes), expected)


def test_a_diverging_task_loses_weight_after_warmup():
    def turning(step):  # falls, then rises: it has started to overfit
        return 1 - 0.01 * step if step <= 25 else 0.75 + 0.01 * (step - 25)

    balancer = run({"steady": lambda s: 1 - 0.005 * s, "turning": turning}, steps=60)
    assert balancer.weights()["turning"] < balancer.weights()["steady"]
    assert balancer.metrics()["acs/turning"] < balancer.metrics()["acs/steady"]


def test_absolute_convergence_penalises_a_slope_turning_to_zero():
    still_falling = [-0.1, -0.1, -0.1]
    flattening = [-0.1, -0.05, -0.001]
    acs = absolute_convergence([still_falling, flattening])
    assert acs[0] > acs[1]


@pytest.mark.parametrize("slopes", [[-0.5], [-0.5, -0.4, -0.1], [0.3, -0.2, 0.9], [-1e-9, 5.0], [0.0, 0.0]])
def test_divergence_factor_stays_in_unit_interval(slopes):
    assert 0.0 <= divergence_factor(slopes, tau=5.0) <= 1.0


def reference_factor(slopes: list[float], tau: float = 5.0) -> float:
    """The reference's unclipped divergence factor: M·softmax(−M·τ·β/Σ|β|)_last."""
    z = -len(slopes) * np.array(slopes) / np.abs(slopes).sum() * tau
    return float(len(slopes) * np.exp(z - z.max())[-1] / np.exp(z - z.max()).sum())


def test_divergence_factor_is_clipped_where_the_reference_exceeds_one():
    falling = [0.4, -0.2, -0.5]  # the max loss falls faster and faster: the reference gives a factor near 3
    assert reference_factor(falling) > 1 and divergence_factor(falling, 5.0) == 1.0
    rising = [-0.5, -0.2, 0.4]  # the max loss turned upward: a small factor, so ACS takes over from RCS
    assert divergence_factor(rising, 5.0) == pytest.approx(reference_factor(rising)) and reference_factor(rising) < 0.1


def test_weights_have_the_reference_floor():
    weights = coba_weights(np.array([1.0, 0.0, 0.0, 0.0]), np.array([1.0, 0.0, 0.0, 0.0]), df=0.5)
    assert weights.min() >= 1 / 40 - 1e-12 and weights.sum() == pytest.approx(1.0)


def test_a_task_missing_from_rounds_keeps_an_aligned_fit():
    """The same line sampled every step, or only on odd steps, gives the same slope and the same weights."""
    line = lambda s: 1 - 0.004 * s  # noqa: E731
    full = run({"a": line, "b": lambda s: 1 - 0.01 * s}, steps=40)
    gappy = run({"a": lambda s: line(s) if s % 2 else None, "b": lambda s: 1 - 0.01 * s}, steps=40)
    assert ols_slope(list(gappy.points["a"])) == pytest.approx(-0.004)
    assert gappy.weights()["a"] == pytest.approx(full.weights()["a"], rel=0.05)
    assert gappy.weights()["a"] > gappy.weights()["b"]  # still the slower task


def test_state_round_trip_continues_exactly():
    curves = {"fast": lambda s: math.exp(-0.05 * s), "slow": lambda s: 1 - 0.002 * s}
    straight = run(curves, steps=40)
    half = run(curves, steps=20)
    resumed = CoBaBalancer(CoBaConfig(warmup_steps=10, history=50), list(curves))
    resumed.load_state_dict(half.state_dict())
    for step in range(21, 41):
        resumed.observe(step, {}, {t: f(step) for t, f in curves.items()})
    assert resumed.weights() == straight.weights()
    assert resumed.metrics() == straight.metrics()
