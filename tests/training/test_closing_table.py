"""The closing per-task table never calls a task "lower" unless the run really learnt something."""

from __future__ import annotations

import math

from mtft.training.summary import print_summary


def _summary(steps: int, skipped: int, end: float) -> dict:
    task = {"train_samples": 8, "val_samples": 2, "initial_val_loss": 5.0, "final_val_loss": end, "final_weight": 1.0}
    return {"steps": steps, "skipped_steps": skipped, "wall_seconds": 1.0, "tokens": 100, "tasks": {"add": task}}


def test_a_run_that_applied_no_update_is_never_lower(capsys):
    print_summary(_summary(steps=3, skipped=3, end=4.9999))  # e.g. kernels that are not bitwise deterministic
    out = capsys.readouterr().out
    assert "unchanged (no update applied)" in out and " lower" not in out
    assert "3 steps (3 skipped: non-finite)" in out


def test_non_finite_losses_are_called_so(capsys):
    print_summary(_summary(steps=3, skipped=1, end=math.nan))
    assert "NOT finite" in capsys.readouterr().out


def test_a_run_that_learnt_reports_its_trend(capsys):
    print_summary(_summary(steps=3, skipped=0, end=4.0))
    out = capsys.readouterr().out
    assert out.rstrip().endswith("lower") and "skipped" not in out


def test_the_table_shows_each_tasks_best_step_and_rise(capsys):
    result = _summary(steps=30, skipped=0, end=4.4)
    result["tasks"]["add"].update(best_step=20, best_val_loss=4.0, rise=0.1)
    print_summary(result)
    header, row = capsys.readouterr().out.splitlines()[-2:]
    assert "best  at step    rise" in header
    assert "4.4000  4.0000       20  +10.0%    1.00  lower" in row


def test_a_task_without_validation_samples_gets_dashes(capsys):
    result = _summary(steps=3, skipped=0, end=4.0)
    result["tasks"]["add"].update(
        val_samples=0, initial_val_loss=None, final_val_loss=None, best_step=None, best_val_loss=None, rise=None
    )
    print_summary(result)
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.split() == ["add", "8", "0", "-", "-", "-", "-", "-", "1.00", "no", "validation", "samples"]
