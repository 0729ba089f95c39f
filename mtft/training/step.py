"""One optimizer step on the DeepSpeed engine, and what it tells the numerical guard (training/guard.py).

Per-task token counts are taken over the whole step on all ranks before any forward, so each micro-batch's
balanced loss is its exact share of the step loss (training/losses.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from mtft.adapters.base import AdapterRuntime
from mtft.data.collate import count_samples, model_inputs, real_tokens
from mtft.distributed import all_reduce_sum, gather_names
from mtft.logging.throughput import attended_positions
from mtft.training.cross_entropy import TokenLosses, full_token_losses
from mtft.training.engine import is_sharded
from mtft.training.guard import nonfinite_gradients, nonfinite_losses, poison_if_nonfinite
from mtft.training.losses import balanced_loss, label_counts, per_task_sums

Reduction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (weights, step token counts) -> w_t: Balancer


@dataclasses.dataclass
class StepResult:
    sums: torch.Tensor  # per-task loss sums over the step, all ranks (cpu)
    counts: torch.Tensor  # per-task completion-token counts, all ranks (cpu)
    loss: float  # the step's balanced loss
    tokens: int  # non-padding tokens processed, all ranks
    samples: int  # samples processed, all ranks
    attended: int  # Σ (position + 1) over those tokens: the causal attention work (logging/throughput.py)
    applied: bool  # False: the update was skipped (a non-finite loss or gradient)
    grad_norm: float | None  # before clipping, as the engine computed it (None where it computes none)


def optimizer_step(
    engine,
    micro_batches: list[dict[str, torch.Tensor]],
    weights: torch.Tensor,
    num_tasks: int,
    adapter: AdapterRuntime,
    reduction: Reduction,
    token_losses: TokenLosses = full_token_losses,
) -> StepResult:
    """One optimizer step over `micro_batches` (the engine's gradient-accumulation count of them), which may
    still be on the CPU: what is counted of them is counted there, and each moves to the device just before its
    forward, so the step waits on the device only where it must (the engine's own checks, and its result).

    A step whose loss or gradient is not finite is skipped by the engine's overflow check (training/guard.py);
    then the routers' loads and balancing biases do not move either.
    """
    local = [sum(f(b) for b in micro_batches) for f in (real_tokens, count_samples, attended_positions)]
    counts = sum(label_counts(b["labels"], b["task_ids"], num_tasks) for b in micro_batches)
    step_counts = all_reduce_sum(counts.to(engine.device))
    weights = reduction(weights, step_counts)
    step_sums = torch.zeros(num_tasks, device=engine.device)
    for batch in micro_batches:
        batch = on_device(batch, engine.device)
        loss, sums = micro_batch_loss(engine, batch, step_counts, weights, adapter, len(micro_batches), token_losses)
        # The loss is already normalised for the whole step: no 1/GAS; DeepSpeed averages over ranks, undo that.
        engine.backward(poison_if_nonfinite(loss) * engine.world_size, scale_wrt_gas=False)
        engine.step()
        step_sums += sums.detach()
    applied = engine.was_step_applied()
    adapter.after_step(applied)
    norm = engine.get_global_grad_norm()
    reduced = all_reduce_sum(torch.cat([step_sums, torch.tensor(local, device=engine.device, dtype=torch.float64)]))
    sums, (tokens, samples, attended) = reduced[:num_tasks].float().cpu(), reduced[num_tasks:].tolist()
    counts = step_counts.cpu()
    step_loss = float(balanced_loss(sums, counts, weights.cpu()))
    grad_norm = None if norm is None else float(norm)
    return StepResult(sums, counts, step_loss, int(tokens), int(samples), int(attended), applied, grad_norm)


def on_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def micro_batch_loss(
    model,
    batch: dict[str, torch.Tensor],
    step_counts: torch.Tensor,
    weights: torch.Tensor,
    adapter: AdapterRuntime,
    micro_batches: int,
    token_losses: TokenLosses = full_token_losses,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(this micro-batch's share of the balanced step loss plus the adapter's auxiliary loss, its per-task sums)."""
    adapter.before_forward(batch)
    losses = token_losses(model, model_inputs(batch), batch["labels"])
    sums, _ = per_task_sums(losses, batch["labels"], batch["task_ids"], len(step_counts))
    return balanced_loss(sums, step_counts, weights) + adapter.aux_loss() / micro_batches, sums


def first_nonfinite(
    engine,
    result: StepResult,
    micro_batches: list[dict[str, torch.Tensor]],
    weights: torch.Tensor,
    names: list[str],
    adapter: AdapterRuntime,
    reduction: Reduction,
) -> str:
    """What made a skipped step non-finite, in words: a task's loss, or the first parameters whose gradient is
    not finite. Collective; recomputes the step's gradients once, only when the run is about to stop."""
    losses = nonfinite_losses(result.sums, names)
    if losses:
        return f"the loss of task{'s' if len(losses) > 1 else ''} " + ", ".join(losses)
    norm = f"the gradient norm ({result.grad_norm})" if result.grad_norm is not None else "the gradients"
    if is_sharded(engine):
        return f"{norm}; parameter names are not available under ZeRO-3 (deepspeed=zero2 shows them)"
    weights = reduction(weights, result.counts.to(engine.device))
    bad: list[str] = []
    for batch in micro_batches:
        batch = on_device(batch, engine.device)
        loss, _ = micro_batch_loss(engine.module, batch, result.counts.to(engine.device), weights, adapter, 1)
        bad += [name for name in nonfinite_gradients(engine.module, loss) if name not in bad]
    bad = gather_names(bad)
    if bad:
        return f"{norm}: non-finite gradients of {', '.join(bad[:5])}"
    if not math.isfinite(result.grad_norm or 0.0):
        return f"{norm}, though no single gradient is non-finite when recomputed without loss scaling (fp16?)"
    return f"{norm}: DeepSpeed's overflow check skipped the update"
