"""The metrics.jsonl record (the README's "Run outputs"), built from what the loop measured.

A record covers the steps since the previous one (its window). Its task losses are the window's exact token means
per task, not means of per-step means, so `LossWindow` keeps per-task loss sums and token counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


def task_means(task_names: list[str], sums: torch.Tensor, counts: torch.Tensor) -> dict[str, float]:
    """Each task's mean token loss, sum / count. A task with no tokens is absent: it has no loss to report."""
    return {name: float(sums[i] / counts[i]) for i, name in enumerate(task_names) if counts[i] > 0}


class LossWindow:
    """Per-task loss sums and completion-token counts over the applied steps since the last record."""

    def __init__(self, num_tasks: int):
        self.sums = torch.zeros(num_tasks)
        self.counts = torch.zeros(num_tasks)

    def add(self, sums: torch.Tensor | list[float], counts: torch.Tensor | list[float]) -> None:
        self.sums += torch.as_tensor(sums, dtype=self.sums.dtype)
        self.counts += torch.as_tensor(counts, dtype=self.counts.dtype)

    def clear(self) -> None:
        self.sums.zero_()
        self.counts.zero_()


@dataclass
class StepNumbers:
    """What one metrics.jsonl line says, before `metrics_record` names and orders its keys."""

    step: int
    loss: float
    lr: float
    task_losses: dict[str, float]  # over the window; a task with no tokens in it has none
    weights: dict[str, float]  # every task's
    mix: dict[str, float] = field(default_factory=dict)  # every task's sampling probability in effect
    samples: dict[str, int] = field(default_factory=dict)  # every task's samples trained so far, all ranks
    val_losses: dict[str, float] = field(default_factory=dict)  # where this step validated
    generation: dict[str, dict[str, float]] = field(default_factory=dict)  # per task, where this step generated
    throughput: dict[str, float] = field(default_factory=dict)
    grad_norm: float | None = None  # where the engine computed one
    skipped_steps: int = 0
    balancer: dict[str, Any] = field(default_factory=dict)  # its internals
    adapter: dict[str, Any] = field(default_factory=dict)  # its metrics, already named (`router/...`)


def metrics_record(task_names: list[str], numbers: StepNumbers) -> dict[str, Any]:
    """One metrics.jsonl line. Keys keep one order (readers diff records, and resumed runs are compared with
    unbroken ones): step, loss, lr; per task its training loss, weight, sampling probability in effect (`mix`),
    samples trained so far (`samples`) and validation loss where there is one; then its generation metrics where
    this step generated (`task/<name>/<metric>`, e.g. exact_match); throughput; grad_norm where the engine computed
    one; skipped steps; the balancer's internals (`balancer/...`); the adapter's metrics (already named, e.g.
    `router/...`)."""
    n = numbers
    record: dict[str, Any] = {"step": n.step, "loss": n.loss, "lr": n.lr}
    for name in task_names:
        if name in n.task_losses:
            record[f"task/{name}/loss"] = n.task_losses[name]
        record[f"task/{name}/weight"] = n.weights[name]
        if name in n.mix:
            record[f"task/{name}/mix"] = n.mix[name]
        if name in n.samples:
            record[f"task/{name}/samples"] = n.samples[name]
        if name in n.val_losses:
            record[f"task/{name}/val_loss"] = n.val_losses[name]
        record.update({f"task/{name}/{metric}": value for metric, value in n.generation.get(name, {}).items()})
    record.update(n.throughput)
    if n.grad_norm is not None:
        record["grad_norm"] = n.grad_norm
    record["train/skipped_steps"] = n.skipped_steps
    record.update({f"balancer/{key}": value for key, value in n.balancer.items()})
    record.update(n.adapter)
    return record
