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
