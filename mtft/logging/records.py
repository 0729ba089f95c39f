"""The metrics.jsonl record (design.md §2, "Run output"), built from what the loop measured.

A record covers the steps since the previous one (its window). Its task losses are the window's exact token means
per task, not means of per-step means, so `LossWindow` keeps per-task loss sums and token counts.
"""

from __future__ import annotations

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


def metrics_record(
    step: int,
    loss: float,
    lr: float,
    task_names: list[str],
    task_losses: dict[str, float],
    weights: dict[str, float],
    val_losses: dict[str, float],
    throughput: dict[str, float],
    grad_norm: float | None,
    skipped_steps: int,
    balancer: dict[str, Any],
    adapter: dict[str, Any],
    generation: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """One metrics.jsonl line. Keys keep one order (readers diff records, and resumed runs are compared with
    unbroken ones): step, loss, lr; per task its training loss, weight and validation loss where there is one;
    then its generation metrics where this step generated (`task/<name>/<metric>`, e.g. exact_match);
    throughput; grad_norm where the engine computed one; skipped steps; the balancer's internals
    (`balancer/...`); the adapter's metrics (already named, e.g. `router/...`)."""
    record: dict[str, Any] = {"step": step, "loss": loss, "lr": lr}
    for name in task_names:
        if name in task_losses:
            record[f"task/{name}/loss"] = task_losses[name]
        record[f"task/{name}/weight"] = weights[name]
        if name in val_losses:
            record[f"task/{name}/val_loss"] = val_losses[name]
        record.update({f"task/{name}/{metric}": value for metric, value in (generation or {}).get(name, {}).items()})
    record.update(throughput)
    if grad_norm is not None:
        record["grad_norm"] = grad_norm
    record["train/skipped_steps"] = skipped_steps
    record.update({f"balancer/{key}": value for key, value in balancer.items()})
    record.update(adapter)
    return record
