"""DWA, uncertainty and FAMO against hand computations, and every balancer through a short training run."""

from __future__ import annotations

import json
import math

import pytest

from mtft.balancers.dwa import DWABalancer, DWAConfig
from mtft.balancers.famo import FAMOBalancer, FAMOConfig
from mtft.balancers.uncertainty import UncertaintyBalancer, UncertaintyConfig
from mtft.training.loop import train
from tests.helpers import balancer_names, compose_config, moved_key, short_run_overrides, small_data_overrides


def test_dwa_by_hand():
    balancer = DWABalancer(DWAConfig(window=2, temperature=2.0), ["a", "b"])
    for step, (a, b) in enumerate([(4, 4), (4, 4), (2, 4), (2, 4)], start=1):  # a halves, b stays
        assert balancer.weights() == {"a": 1.0, "b": 1.0}  # uniform until two windows are complete
        balancer.observe(step, {"a": a, "b": b}, None)
    ea, eb = math.exp(0.5 / 2), math.exp(1.0 / 2)
    assert balancer.weights()["a"] == pytest.approx(2 * ea / (ea + eb))
    assert balancer.weights()["b"] == pytest.approx(2 * eb / (ea + eb))  # the stalled task gets more


def test_uncertainty_moves_toward_log_loss_and_downweights_noisy_tasks():
    balancer = UncertaintyBalancer(UncertaintyConfig(lr=0.1), ["easy", "hard"])
    balancer.observe(1, {"easy": 0.5, "hard": 2.0}, None)
    assert balancer.log_variance["easy"] == pytest.approx(-0.1 * (1 - 0.5))
    assert balancer.log_variance["hard"] == pytest.approx(-0.1 * (1 - 2.0))
    for step in range(2, 500):
        balancer.observe(step, {"easy": 0.5, "hard": 2.0}, None)
    assert balancer.log_variance["hard"] == pytest.approx(math.log(2.0), abs=1e-3)  # the optimum s = log L
    assert balancer.weights()["easy"] > balancer.weights()["hard"]


def test_famo_weights_by_hand():
    balancer = FAMOBalancer(FAMOConfig(), ["a", "b"])
    balancer.observe(1, {"a": 2.0, "b": 1.0}, None)
    # z uniform; w_i = z_i / (l_i - l*) = (0.25, 0.5), reported with mean 1
    assert balancer.weights() == pytest.approx({"a": 2 / 3, "b": 4 / 3})


def test_famo_shifts_weight_to_the_task_that_improved_less():
    balancer = FAMOBalancer(FAMOConfig(), ["a", "b"])
    balancer.observe(1, {"a": 2.0, "b": 2.0}, None)
    balancer.after_step(lambda: {"a": 1.9, "b": 1.0})  # b's loss halved, a's barely moved
    z = balancer.metrics()
    assert z["z/a"] > 0.5 > z["z/b"]
    restored = FAMOBalancer(FAMOConfig(), ["a", "b"])
    restored.load_state_dict(balancer.state_dict())
    assert restored.metrics() == z and restored.weights() == balancer.weights()


@pytest.mark.parametrize("name", balancer_names())
def test_every_balancer_trains_and_logs_its_weights(name, dist_group, small_tasks, tmp_path):
    """Six steps of every registered balancer, with the short-run settings its config has (warm-up, windows)."""
    cfg = compose_config(
        [f"balancer={name}", *short_run_overrides(name), *small_data_overrides(small_tasks), "trainer.max_steps=6"]
        + ["trainer.logging_steps=1", f"trainer.output_dir={tmp_path}"]
    )
    train(cfg)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(math.isfinite(r["loss"]) for r in records)
    key = moved_key(name)  # the loss's weights, or the mix where the balancer samples by default (ODM)
    weights = {(r[f"task/add/{key}"], r[f"task/sentiment/{key}"]) for r in records}
    assert (len(weights) > 1) == (name in balancer_names("adaptive"))  # adaptive ones do adapt, fixed ones do not
