"""Per-task overfitting is visible: each task's best full evaluation (summary.json's `best_step`, `best_val_loss`,
`rise`), from the evaluations only, kept through a resume."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from mtft.training.best_val import Best, BestValLosses
from mtft.training.checkpoint.resumable import TrainState
from mtft.training.loop import train
from tests.helpers import compose_config, small_data_overrides


def _observed() -> BestValLosses:
    best = BestValLosses()
    best.observe(0, {"a": 3.0, "b": 2.0, "nan_only": math.nan})
    best.observe(2, {"a": 2.5, "b": math.nan, "nan_only": math.nan})
    best.observe(4, {"a": 2.5, "b": 2.1, "nan_only": math.inf})  # a tie keeps step 2
    best.observe(6, {"a": math.inf, "b": 1.5})
    best.observe(8, {"a": 2.75, "b": 1.8})  # the final evaluation
    return best


def test_the_best_is_the_lowest_finite_loss_and_rise_is_final_over_best_minus_one():
    best = _observed()
    assert best.best == {"a": Best(2, 2.5), "b": Best(6, 1.5)}
    assert best.fields("a", 2.75) == {"best_step": 2, "best_val_loss": 2.5, "rise": pytest.approx(0.1)}
    assert best.fields("b", 1.8) == {"best_step": 6, "best_val_loss": 1.5, "rise": pytest.approx(0.2)}
    assert best.fields("b", 1.5)["rise"] == 0.0  # the final evaluation is the best
    assert best.fields("b", math.nan) == {"best_step": 6, "best_val_loss": 1.5, "rise": None}
    empty = {"best_step": None, "best_val_loss": None, "rise": None}
    assert best.fields("nan_only", math.nan) == best.fields("no_val_samples", None) == empty


def test_the_best_travels_in_the_train_state_and_older_checkpoints_load_with_none():
    saved = TrainState(step=8, best_val=_observed())
    state = saved.state_dict()
    assert state["best_val_losses"] == {"a": {"step": 2, "val_loss": 2.5}, "b": {"step": 6, "val_loss": 1.5}}
    resumed = TrainState()
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert resumed == saved and resumed.best_val.best["b"] == Best(6, 1.5)
    older = TrainState(best_val=_observed())
    older.load_state_dict({k: v for k, v in state.items() if k != "best_val_losses"})
    assert older.best_val.best == {}


def _config(out, small_tasks, *extra):
    return compose_config(
        [
            *small_data_overrides(small_tasks),
            f"trainer.output_dir={out}",
            "trainer.micro_batch_size=4",
            "trainer.lr=3e-2",  # high enough that a task's validation loss rises again within 12 steps
            "trainer.eval_steps=2",
            "trainer.max_steps=12",
            "trainer.save_steps=4",
            *extra,
        ]
    )


def _full_evaluations(out, summary: dict, name: str) -> list[tuple[float, int]]:
    """(val_loss, step) of every full evaluation: the one before step 1 (summary.json's `initial_val_loss`) and
    each metrics.jsonl record at an evaluation step (every eval_steps, and the last)."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluated = [(r[f"task/{name}/val_loss"], r["step"]) for r in records if r["step"] % 2 == 0 or r["step"] == 12]
    return [(summary["tasks"][name]["initial_val_loss"], 0), *evaluated]


def test_summary_names_each_tasks_best_full_evaluation(dist_group, small_tasks, tmp_path, capsys):
    out = tmp_path / "run"
    summary = train(_config(out, small_tasks))
    assert json.loads((out / "summary.json").read_text()) == summary
    for name, task in summary["tasks"].items():
        evaluations = _full_evaluations(out, summary, name)
        assert len(evaluations) == 7  # steps 0, 2, …, 12
        assert (task["best_val_loss"], task["best_step"]) == min(evaluations)
        assert task["rise"] == pytest.approx(task["final_val_loss"] / task["best_val_loss"] - 1) and task["rise"] >= 0
    assert any(task["best_step"] < 12 and task["rise"] > 0 for task in summary["tasks"].values())
    table = capsys.readouterr().out
    assert "best  at step    rise" in table
    for name, task in summary["tasks"].items():
        row = [line for line in table.splitlines() if line.startswith(name)][-1]  # the closing table's
        assert f"{task['best_val_loss']:.4f}{task['best_step']:>9}{task['rise']:>+8.1%}" in row


def test_a_resumed_run_finds_the_best_of_the_unbroken_one(dist_group, small_tasks, tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    expected = train(_config(straight, small_tasks))
    # the point of the test: some task's best comes before the checkpoint resumed from, so it must travel in it
    assert any(task["best_step"] <= 8 and task["rise"] > 0 for task in expected["tasks"].values())
    train(_config(broken, small_tasks))
    shutil.rmtree(broken / "checkpoint-12")  # as if killed (kill -9) after checkpoint-8
    resumed = train(_config(broken, small_tasks, "trainer.resume=auto"))
    keys = ("initial_val_loss", "final_val_loss", "best_step", "best_val_loss", "rise")
    for name, task in expected["tasks"].items():
        assert {k: resumed["tasks"][name][k] for k in keys} == {k: task[k] for k in keys}
