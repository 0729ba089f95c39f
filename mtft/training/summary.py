"""The run's JSON reports (data_report.json, summary.json) and the closing per-task table."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtft.balancers import Balancer
from mtft.data.tasks import TaskData
from mtft.training.best_val import BestValLosses


def data_report(tasks: list[TaskData], probabilities: np.ndarray) -> dict[str, Any]:
    """Per task: every line read is either a sample (train or validation) or counted under a drop reason."""
    return {
        "tasks": {
            task.name: {**task.report, "mixing_probability": round(float(p), 6)}
            for task, p in zip(tasks, probabilities, strict=True)
        }
    }


def data_report_table(report: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of the data report, for a logger's table."""
    columns = ["task", "format", "lines_read", "train", "val", "dropped", "truncated", "mean_length", "p_mix"]
    rows = [
        [
            name,
            r["format"],
            r["lines_read"],
            r["train_samples"],
            r["val_samples"],
            sum(r["dropped"].values()),
            r["truncated"],
            r["mean_length"],
            r["mixing_probability"],
        ]
        for name, r in report["tasks"].items()
    ]
    return columns, rows


def print_data_report(report: dict[str, Any]) -> None:
    columns = f"{'task':<16}{'format':<17}{'lines':>7}{'train':>7}{'val':>6}{'dropped':>9}{'truncated':>11}"
    print(columns + f"{'mean len':>10}{'p(mix)':>8}")
    for name, r in report["tasks"].items():
        reasons = ", ".join(f"{k}: {v}" for k, v in r["dropped"].items())
        counts = f"{r['lines_read']:>7}{r['train_samples']:>7}{r['val_samples']:>6}{sum(r['dropped'].values()):>9}"
        print(
            f"{name:<16}{r['format']:<17}{counts}{r['truncated']:>11}{r['mean_length']:>10.1f}"
            f"{r['mixing_probability']:>8.3f}" + (f"  ({reasons})" if reasons else "")
        )


@dataclass
class RunTotals:
    steps: int
    wall_seconds: float
    tokens: int
    trainable_parameters: int
    skipped_steps: int = 0  # steps whose update the numerical guard skipped (training/guard.py)


def summary(
    tasks: list[TaskData],
    totals: RunTotals,
    initial_val: dict[str, float],
    final_val: dict[str, float],
    balancer: Balancer,
    best_val: BestValLosses | None = None,
) -> dict[str, Any]:
    """summary.json: the run's totals, and per task its samples, validation losses (the first, the last and the
    best, with how far the last is above the best) and final weight."""
    best_val = best_val or BestValLosses()
    weights = balancer.weights()
    return {
        "steps": totals.steps,
        "skipped_steps": totals.skipped_steps,
        "trainable_parameters": totals.trainable_parameters,
        "wall_seconds": round(totals.wall_seconds, 3),
        "tokens": totals.tokens,
        "tasks": {
            task.name: {
                "train_samples": task.report["train_samples"],
                "val_samples": task.report["val_samples"],
                "dropped": sum(task.report["dropped"].values()),
                "truncated": task.report["truncated"],
                "initial_val_loss": initial_val.get(task.name),
                "final_val_loss": final_val.get(task.name),
                **best_val.fields(task.name, final_val.get(task.name)),
                "final_weight": weights[task.name],
            }
            for task in tasks
        },
    }


def print_summary(result: dict[str, Any]) -> None:
    skipped = result.get("skipped_steps", 0)
    note = f" ({skipped} skipped: non-finite)" if skipped else ""
    print(f"\n{result['steps']} steps{note} in {result['wall_seconds']:.1f}s, {result['tokens']:,} tokens")
    columns = f"{'task':<16}{'train':>7}{'val':>6}{'val loss start':>16}{'end':>8}{'best':>8}{'at step':>9}"
    print(columns + f"{'rise':>8}{'weight':>8}")
    for name, t in result["tasks"].items():
        start, end = t["initial_val_loss"], t["final_val_loss"]
        trend = _trend(start, end, learnt=result["steps"] > skipped)
        losses = f"{_cell(start, '.4f', 16)}{_cell(end, '.4f', 8)}{_cell(t.get('best_val_loss'), '.4f', 8)}"
        best = f"{_cell(t.get('best_step'), 'd', 9)}{_cell(t.get('rise'), '+.1%', 8)}"
        samples = f"{name:<16}{t['train_samples']:>7}{t['val_samples']:>6}"
        print(f"{samples}{losses}{best}{t['final_weight']:>8.2f}  {trend}")


def _cell(value: float | None, spec: str, width: int) -> str:
    """A right-aligned number, or "-" where there is none (a task without validation samples)."""
    return f"{'-' if value is None else format(value, spec):>{width}}"


def _trend(start: float | None, end: float | None, learnt: bool) -> str:
    """Only a run that applied at least one update, with finite losses, can call a task's loss lower."""
    if start is None and end is None:
        return "no validation samples"
    if not learnt:
        return "unchanged (no update applied)"
    if start is None or end is None or not math.isfinite(start) or not math.isfinite(end):
        return "NOT finite"
    return "lower" if end < start else "NOT lower"
