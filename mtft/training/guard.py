"""The numerical guard: no optimizer step is taken from a non-finite loss or gradient, and no run trains on quietly
after one.

It costs no pass of its own over the gradients: every path tests the global gradient norm it computes for
clipping, and skips the update and the LR schedule when it is not finite. The lean step (ZeRO-0, bf16 or fp32;
training/optimizer.py) decides on the device, through fused AdamW's `found_inf`; DeepSpeed's ZeRO optimizers and
fp16 wrapper use their own overflow check. Around that:

- A non-finite loss can have finite gradients (an infinite cross-entropy has a finite softmax gradient). The lean
  step's optimizer watches each loss and makes the norm NaN; on DeepSpeed's paths the loss is multiplied by NaN
  before its backward (`poison_if_nonfinite`). Either way the gradient all-reduce carries the decision to every
  rank.
- The step reads whether it was applied with its other numbers, once (training/step.py). A skipped step is
  counted and shown, leaves the balancer and the routers' balancing untouched, and after `trainer.max_bad_steps`
  skipped steps in a row the run stops with `TrainingDiverged`, naming the step, the first non-finite quantity
  and the last good checkpoint. The decision is exact at every step: no stop comes a step late.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from mtft.distributed import gather_names, local_values


class TrainingDiverged(RuntimeError):
    """The run cannot go on: too many consecutive skipped steps, or non-finite weights about to be saved."""


def poison_if_nonfinite(loss: torch.Tensor) -> torch.Tensor:
    """`loss` unchanged (times exactly 1) when finite; NaN with NaN gradients when not. No host sync."""
    return loss * torch.where(torch.isfinite(loss.detach()), 1.0, math.nan)


class NumericalGuard:
    """Counts skipped steps (in total and in a row) and decides when the run must stop. Its state is part of
    every checkpoint, so a resumed run counts on exactly as the unbroken one."""

    def __init__(self, max_bad_steps: int):
        self.max_bad_steps = max_bad_steps
        self.skipped = 0  # in the whole run
        self.in_a_row = 0
        self.first_bad_step: int | None = None  # where the current streak began

    def step_applied(self) -> None:
        self.in_a_row, self.first_bad_step = 0, None

    def step_skipped(self, step: int) -> bool:
        """Count a skipped step; True when the run must stop."""
        self.skipped += 1
        self.in_a_row += 1
        if self.first_bad_step is None:
            self.first_bad_step = step
        return self.in_a_row >= self.max_bad_steps

    def stop_message(self, step: int, cause: str, last_checkpoint: Path | None) -> str:
        saved = (
            f"the last good checkpoint is {last_checkpoint} (trainer.resume=auto continues from it once the cause "
            "is fixed)"
            if last_checkpoint is not None
            else "no checkpoint was written"
        )
        return (
            f"training stopped at step {step}: {self.in_a_row} steps in a row were skipped (since step "
            f"{self.first_bad_step}; trainer.max_bad_steps={self.max_bad_steps}). First non-finite quantity at step "
            f"{step}: {cause}. Nothing was learnt from those steps; {saved}."
        )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "in_a_row": self.in_a_row, "first_bad_step": self.first_bad_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped, self.in_a_row, self.first_bad_step = state["skipped"], state["in_a_row"], state["first_bad_step"]


def nonfinite_losses(sums: torch.Tensor, names: list[str]) -> list[str]:
    """Tasks whose loss sum over the step is not finite, e.g. ['add (nan)']."""
    return [f"{name} ({float(sums[i])})" for i, name in enumerate(names) if not math.isfinite(float(sums[i]))]


def skip_cause(task_losses: list[str], grad_norm: float | None) -> str:
    """What made a step non-finite, from what the step already computed."""
    if task_losses:
        return f"non-finite loss of task{'s' if len(task_losses) > 1 else ''} " + ", ".join(task_losses)
    if grad_norm is not None and not math.isfinite(grad_norm):
        return f"non-finite gradient norm ({grad_norm})"
    return "DeepSpeed's overflow check skipped the update"


def nonfinite_gradients(model: torch.nn.Module, loss: torch.Tensor, limit: int = 5) -> list[str]:
    """The first `limit` trainable parameters whose gradient of `loss` is not finite, found with autograd.grad
    (nothing is accumulated into .grad, so DeepSpeed's hooks stay out of it). Run once, when the run stops."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    bad = [n for (n, _), g in zip(named, grads, strict=True) if g is not None and not torch.isfinite(g).all()]
    return bad[:limit] + ([f"… {len(bad) - limit} more"] if len(bad) > limit else [])


def nonfinite_weights_message(step: int, bad: list[str], last_checkpoint: Path | None) -> str:
    """Why checkpoint-`step` is not written: weights that are not finite are never saved."""
    kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written"
    return (
        f"training stopped at step {step}: the trained weights hold non-finite values ({', '.join(bad)}), so "
        f"checkpoint-{step} was not written; {kept}. Lower trainer.lr or check the data."
    )


def nonfinite_parameters(model: torch.nn.Module, limit: int = 5) -> list[str]:
    """Trainable parameters (this rank's shard under ZeRO-3) holding a non-finite value, agreed over ranks.
    A pass over the trainable weights: run only before a checkpoint is written."""
    bad = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            local = local_values(param)
            if local.numel() and not torch.isfinite(local).all():
                bad.append(name)
    return gather_names(bad)[:limit]
