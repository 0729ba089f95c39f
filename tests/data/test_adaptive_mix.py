"""data/adaptive_mix.py: the mix a balancer's weights drive (balancer.apply_to=sampling), checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from mtft.data.adaptive_mix import AdaptiveMix, floored, target_mix

STATIC = np.array([0.5, 0.3, 0.2])


def test_weights_of_one_keep_the_static_mix():
    mix = AdaptiveMix(STATIC, floor=0.1, smoothing=0.9)
    np.testing.assert_allclose(mix.follow(np.ones(3)), STATIC, rtol=0, atol=1e-15)


def test_the_target_is_the_static_mix_times_the_weights():
    # 0.5·2 : 0.3·1 : 0.2·0.5 = 1.0 : 0.3 : 0.1 -> /1.4
    np.testing.assert_allclose(target_mix(STATIC, np.array([2.0, 1.0, 0.5])), [1 / 1.4, 0.3 / 1.4, 0.1 / 1.4])
    np.testing.assert_allclose(target_mix(STATIC, np.array([np.nan, 1.0, 1.0])), STATIC)  # no finite weights: static
    np.testing.assert_allclose(target_mix(STATIC, np.zeros(3)), STATIC)


def test_the_floor_holds_each_task_at_a_share_of_its_static_one():
    """floor = 0.1 · static = (0.05, 0.03, 0.02). Weights (1, 1, 0.001): target ∝ (0.5, 0.3, 0.0002), so task 3 sits
    at its floor 0.02, and tasks 1 and 2 share 0.98 as 5 : 3 (0.6125, 0.3675)."""
    mix = AdaptiveMix(STATIC, floor=0.1, smoothing=0.0)
    np.testing.assert_allclose(mix.follow(np.array([1.0, 1.0, 0.001])), [0.6125, 0.3675, 0.02], rtol=0, atol=1e-12)


def test_pinning_one_task_can_push_another_below_and_both_are_held():
    """floor (0.3, 0.3, 0.05); p = (0.2, 0.1, 0.7): tasks 1 and 2 are pinned, task 3 takes the remaining 0.4."""
    out = floored(np.array([0.2, 0.1, 0.7]), np.array([0.3, 0.3, 0.05]))
    np.testing.assert_allclose(out, [0.3, 0.3, 0.4], rtol=0, atol=1e-12)
    out = floored(np.array([0.31, 0.01, 0.68]), np.array([0.3, 0.05, 0.05]))  # 2 pinned: 1 gets 0.2975, pinned too
    np.testing.assert_allclose(out, [0.3, 0.05, 0.65], rtol=0, atol=1e-12)


def test_smoothing_moves_the_mix_part_way_and_the_state_resumes():
    """β = 0.5, weights (3, 1, 1): target ∝ (1.5, 0.3, 0.2) = (0.75, 0.15, 0.1); p = (0.625, 0.225, 0.15)."""
    mix = AdaptiveMix(STATIC, floor=0.0, smoothing=0.5)
    np.testing.assert_allclose(mix.follow(np.array([3.0, 1.0, 1.0])), [0.625, 0.225, 0.15], rtol=0, atol=1e-12)
    resumed = AdaptiveMix(STATIC, floor=0.0, smoothing=0.5)
    resumed.load_state_dict(mix.state_dict())
    weights = np.array([0.2, 1.0, 4.0])
    np.testing.assert_array_equal(resumed.follow(weights), mix.follow(weights))


@pytest.mark.parametrize("floor", [0.05, 0.5, 0.9])
def test_any_weights_give_a_distribution_above_the_floor(floor):
    rng = np.random.default_rng(0)
    mix = AdaptiveMix(STATIC, floor=floor, smoothing=0.3)
    for _ in range(200):
        p = mix.follow(np.exp(rng.normal(0, 4, size=3)))
        assert p.sum() == pytest.approx(1.0) and np.all(p >= floor * STATIC - 1e-12)
