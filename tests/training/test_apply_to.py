"""balancer.apply_to: a balancer's weights drive the sampler (training/weight_routes.py) for every adaptive balancer
with no code of its own, the samples follow the mix, and the loop step that does it adds no host sync."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from torch.profiler import ProfilerActivity, profile

from mtft.bench.ops import count_events
from mtft.training.loop import TrainingRecipe, train
from tests.helpers import balancer_names, compose_config, short_run_overrides, small_data_overrides
from tests.training.test_guard import inject_nan_into_add

pytestmark = pytest.mark.integration


def _config(out: Path, small_tasks, *extra: str):
    return compose_config(
        [
            *small_data_overrides(small_tasks),
            "logger=none",
            "trainer.micro_batch_size=8",
            f"trainer.output_dir={out}",
            *extra,
        ]
    )


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("balancer", balancer_names("adaptive"))
def test_every_adaptive_balancer_moves_the_mix_and_the_samples_follow(dist_group, small_tasks, tmp_path, balancer):
    out = tmp_path / balancer
    extra = [f"balancer={balancer}", "balancer.apply_to=sampling", "balancer.mix_smoothing=0.5"]
    extra += [*short_run_overrides(balancer), "trainer.max_steps=8", "trainer.logging_steps=1", "trainer.eval_steps=4"]
    train(_config(out, small_tasks, *extra))
    records = _records(out)
    mixes = [(r["task/add/mix"], r["task/sentiment/mix"]) for r in records]
    assert mixes[0] == (0.5, 0.5)  # the static (natural) mix until the balancer's first update
    assert len(set(mixes)) > 2, mixes  # then it moves, step after step
    assert all(a + b == pytest.approx(1.0) for a, b in mixes)
    assert all(r["task/add/weight"] == r["task/sentiment/weight"] == 1.0 for r in records)  # the loss: a token mean
    samples = [r["task/add/samples"] + r["task/sentiment/samples"] for r in records]
    assert samples == [8 * step for step in range(1, 9)]  # every sample trained, counted once


def test_samples_follow_a_fixed_mix_within_binomial_bounds(dist_group, small_tasks, tmp_path):
    """Static weights (add 9, sentiment 1) drive the sampler: after step 1 (drawn by the static 50/50 mix) p = 0.9
    for add. Over 40 steps of 8 samples, add's count lies within 5 binomial standard deviations of 4 + 0.9·312."""
    extra = ["balancer=static", "balancer.weights={add: 9}", "balancer.apply_to=sampling"]
    extra += ["balancer.mix_smoothing=0", "balancer.mix_floor=0", "trainer.max_steps=40", "trainer.logging_steps=10"]
    recipe = TrainingRecipe(_config(tmp_path / "run", small_tasks, *extra, "trainer.eval_steps=1000"))
    try:
        recipe.setup()
        recipe.train()
        assert recipe.routes.loss_weights() == {"add": 1.0, "sentiment": 1.0}
        add, sentiment = recipe.state.task_samples
    finally:
        recipe.cleanup()
    assert add + sentiment == 320
    n, p = 312, 0.9
    assert abs(add - (4 + n * p)) <= 5 * np.sqrt(n * p * (1 - p)) + 4 * 0.5, (add, sentiment)
    assert [r["task/add/mix"] for r in _records(tmp_path / "run")] == pytest.approx([0.9] * 4)


def _step_syncs(recipe: TrainingRecipe) -> dict[str, int]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        recipe._train_step()
    return count_events(prof.events())[1]


def _loop_step(tmp_path: Path, small_tasks, balancer: str, apply_to: str) -> tuple[dict[str, int], dict[str, float]]:
    """(the host syncs of the 5th loop step, the mix in effect after it)."""
    extra = [f"balancer={balancer}", f"balancer.apply_to={apply_to}", *short_run_overrides(balancer)]
    cfg = _config(tmp_path / f"{balancer}-{apply_to}", small_tasks, *extra, "trainer.eval_steps=1000")
    cfg.trainer.logging_steps = 1000
    recipe = TrainingRecipe(cfg)
    try:
        recipe.setup()
        for _ in range(4):
            recipe._train_step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            recipe._train_step()
        return count_events(prof.events())[1], recipe.routes.mix_in_effect()
    finally:
        recipe.cleanup()


@pytest.mark.parametrize("balancer", balancer_names("adaptive"))
def test_a_loop_step_that_moves_the_mix_adds_no_host_sync(dist_group, small_tasks, tmp_path, balancer):
    """A whole loop step (drawing, the optimizer step, the balancer's update, the mix following it) with the
    weights on the sampler makes the host syncs it makes with them on the loss: the step's one read, the host-side
    counts of the batches it draws (CPU tensors), and the balancer's own (CoBa's validation micro-batches, FAMO's
    second forward)."""
    on_loss, _ = _loop_step(tmp_path, small_tasks, balancer, "loss")
    on_sampling, mix = _loop_step(tmp_path, small_tasks, balancer, "sampling")
    assert on_sampling == on_loss and on_sampling["mtft::host_read"] == 1, (on_sampling, on_loss)
    assert mix["add"] != 0.5  # the sampling run's mix did move


def test_steps_where_every_task_is_non_finite_leave_the_mix_as_it_was(dist_group, small_tasks, tmp_path, monkeypatch):
    """Steps 4 and 5 have NaN losses in every task: both are skipped, the balancer observes nothing, so the mix
    (which step 4 drew with) is what steps 5 and 6 draw with too; from the applied step 6 on it moves again."""
    inject_nan_into_add(monkeypatch, {4, 5}, every_task=True)
    extra = ["balancer=famo", "balancer.apply_to=sampling", "balancer.mix_smoothing=0", "trainer.max_steps=8"]
    extra += ["trainer.logging_steps=1", "trainer.eval_steps=100"]
    summary = train(_config(tmp_path / "run", small_tasks, *extra))
    mixes = {r["step"]: r["task/add/mix"] for r in _records(tmp_path / "run")}
    assert summary["skipped_steps"] == 2
    assert mixes[4] == mixes[5] == mixes[6] != mixes[7]
    assert len({mixes[2], mixes[3], mixes[4]}) == 3  # FAMO moves it every applied step
