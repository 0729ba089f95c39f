"""The numerical guard: no optimizer step is taken from a non-finite loss or gradient, and no run trains on quietly
after one.

It costs no pass of its own over the gradients. Every precision already has an overflow check that skips the
update and the LR schedule: DeepSpeed's ZeRO optimizers and its bf16/fp16 wrappers test the global gradient norm
they compute for clipping, and in plain fp32 without ZeRO (where DeepSpeed has none) `FiniteCheckedAdamW` clips
and tests with its one norm. Two things are added around that:

- A non-finite loss can have finite gradients (an infinite cross-entropy has a finite softmax gradient), so the
  loss is multiplied by NaN before its backward (`poison_if_nonfinite`): the overflow path then skips that step
  too, and the gradient all-reduce carries the decision to every rank.
- The loop reads `engine.was_step_applied()` after each step. A skipped step is counted and shown, leaves the
  balancer and the routers' balancing untouched, and after `trainer.max_bad_steps` skipped steps in a row the
  run stops with `TrainingDiverged`, naming the step, the first non-finite quantity and the last good checkpoint.
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


class FiniteCheckedAdamW(torch.optim.AdamW):
    """AdamW that clips by the global gradient norm and skips its update when that norm is not finite.

    For plain fp32 without ZeRO only, where DeepSpeed calls the optimizer as it is: its own clipping there
    computes the norm and drops it. DeepSpeed reads `overflow` after the step (True skips the LR schedule and
    counts a skipped step, as its own overflow path does) and reports `_global_grad_norm` as the gradient norm.
    """

    def __init__(self, params, max_grad_norm: float, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.max_grad_norm = max_grad_norm
        self.overflow = False
        self._global_grad_norm: float | None = None

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return super().step(closure)
        # computed and applied as DeepSpeed's own fp32 clipping does (runtime/utils.clip_grad_norm_), to the bit
        total = torch.stack([p.grad.detach().float().norm(2) for p in params]).pow(2).sum().float().pow(0.5)
        self._global_grad_norm = norm = float(total)
        self.overflow = not math.isfinite(norm)
        if self.overflow:
            return None
        if self.max_grad_norm > 0:
            clip = torch.clamp(self.max_grad_norm / (total + 1e-6), max=1.0)
            for param in params:
                param.grad.mul_(clip)
        return super().step(closure)


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
