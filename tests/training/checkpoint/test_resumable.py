"""Everything a resume restores beyond the engine goes through `Resumable`, in the checkpoint layout mtft has
always written, so older checkpoints resume unchanged."""

from __future__ import annotations

import numpy as np

from mtft.balancers import build_balancer
from mtft.balancers.dwa import DWAConfig
from mtft.data.batches import MixedBatches, ValidationCycle
from mtft.data.tasks import Sample, TaskData
from mtft.training.checkpoint.resumable import Resumable, TrainState
from mtft.training.early_stopping import EarlyStopping
from mtft.training.guard import NumericalGuard
from mtft.training.weight_routes import WeightRoutes

NAMES = ["add", "sort"]


def _resumable() -> Resumable:
    tasks = [
        TaskData(
            name,
            [Sample([t, i, 5], [t, i, 5], t) for i in range(7)],
            [Sample([t, i, 6], [t, i, 6], t) for i in range(3)],
        )
        for t, name in enumerate(NAMES)
    ]
    balancer_cfg = DWAConfig(window=1, apply_to="both")  # weights move after two observed steps
    balancer = build_balancer(balancer_cfg, NAMES)
    batches = MixedBatches(tasks, np.array([0.5, 0.5]), micro_batch_size=2, pad_token_id=-1, seed=3)
    return Resumable(
        TrainState(task_samples=[0, 0]),
        NumericalGuard(max_bad_steps=3),
        balancer,
        batches,
        ValidationCycle(tasks, batch_size=2, pad_token_id=-1, seed=3),
        EarlyStopping(patience=3),
        WeightRoutes(balancer, balancer_cfg, batches, np.array([0.5, 0.5]), NAMES),
    )


def _run_a_while(r: Resumable) -> None:
    r.state.step, r.state.tokens, r.state.initial_val_losses = 5, 120, {"add": 2.0, "sort": 3.0}
    for step, losses in enumerate([{"add": 2.0, "sort": 3.0}, {"add": 1.0, "sort": 3.0}], start=1):
        r.balancer.observe(step, losses, None)
    r.batches.next()
    r.routes.follow_weights(r.batches.rounds)  # the mix moves from the next round on
    r.state.task_samples = [1, 1]
    r.val_cycle.next()
    r.guard.step_skipped(5)
    r.early_stopping.observe(4, {"add": 2.0, "sort": 3.0}, {})
    r.state.best_val.observe(4, {"add": 2.0, "sort": 3.0})


def test_the_checkpoint_layout_is_the_one_checkpoints_always_had():
    r = _resumable()
    _run_a_while(r)
    run_state, rank_state = r.run_state(), r.rank_state()
    # early_stopping added 2026-12-04, best_val_losses 2026-12; a checkpoint without one loads as a run that
    # observed nothing
    assert list(run_state) == [
        "step",
        "tokens",
        "initial_val_losses",
        "best_val_losses",
        "task_samples",
        "balancer",
        "guard",
        "early_stopping",
        "mix",
    ]
    assert (run_state["step"], run_state["tokens"]) == (5, 120)
    assert list(rank_state) == ["batches", "val_cycle", "weights"]
    assert rank_state["val_cycle"] == 2  # the bare cursor, past one global batch of 2
    assert rank_state["weights"] == r.balancer.weights() != {"add": 1.0, "sort": 1.0}


def test_loading_with_the_same_data_continues_exactly():
    saved = _resumable()
    _run_a_while(saved)
    resumed = _resumable()
    resumed.load(saved.run_state(), saved.rank_state(), same_data=True)
    assert resumed.state == saved.state and resumed.state.best_val.best["sort"].step == 4
    assert resumed.guard.state_dict() == saved.guard.state_dict()
    assert resumed.early_stopping == saved.early_stopping and saved.early_stopping.best_step == 4
    assert resumed.balancer.weights() == saved.balancer.weights()
    assert resumed.routes.state_dict() == saved.routes.state_dict() != {"current": [0.5, 0.5]}
    assert resumed.batches.sampler.schedule[-1][1].tolist() == saved.routes.state_dict()["current"]
    for name in ("input_ids", "labels"):
        assert resumed.batches.next()[name].equal(saved.batches.next()[name])
        assert resumed.val_cycle.next()[name].equal(saved.val_cycle.next()[name])


def test_loading_with_other_data_keeps_the_progress_and_restarts_the_stream():
    saved = _resumable()
    _run_a_while(saved)
    resumed, fresh = _resumable(), _resumable()
    resumed.load(saved.run_state(), saved.rank_state(), same_data=False)
    assert (resumed.state.step, resumed.state.tokens) == (5, 120)
    assert resumed.guard.state_dict() == saved.guard.state_dict()
    assert resumed.state.initial_val_losses == {}  # measured again, on the new data
    assert resumed.state.best_val.best == {}
    assert resumed.state.task_samples == [0, 0] and resumed.routes.state_dict() == {"current": [0.5, 0.5]}
    assert resumed.balancer.weights() == {"add": 1.0, "sort": 1.0}
    assert resumed.val_cycle.cursor == 0
    assert resumed.batches.next()["input_ids"].equal(fresh.batches.next()["input_ids"])
