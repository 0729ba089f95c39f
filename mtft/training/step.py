"""One optimizer step on the engine (training/engine.py), and what it tells the numerical guard (training/guard.py).

Per-task token counts are taken over the whole step on all ranks before any forward, so each micro-batch's
balanced loss is its exact share of the step loss (training/losses.py).

The step is lean: what is counted of the batches is counted on the host when they are drawn (`StepBatches`),
numerical decisions are made on the device, and the host reads the step's numbers (per-task sums and counts,
weights, gradient norm, whether it was skipped) once, at its end: `host_values`, the step's one sync.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from mtft.adapters.base import AdapterRuntime
from mtft.data.collate import model_inputs, real_tokens, task_samples
from mtft.distributed import all_reduce_sum, gather_names
from mtft.logging.throughput import attended_positions
from mtft.models import attention_inputs, packed_sample_ids
from mtft.training.cross_entropy import TokenLosses, full_token_losses
from mtft.training.engine import Engine, is_sharded
from mtft.training.guard import nonfinite_gradients, nonfinite_losses
from mtft.training.losses import (
    label_counts,
    loss_coefficients,
    loss_task_index,
    next_token_targets,
    task_loss_sums,
)
from mtft.training.model_runner import ModelRunner, PlainRunner

Reduction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (weights, step token counts) -> w_t: Balancer
HOST_READ = "mtft::host_read"  # the profiler's name for the step's one copy of its numbers to the host


@dataclasses.dataclass
class StepBatches:
    """One optimizer step's micro-batches, on the host, with what the step needs counted of them (this rank's)."""

    micro_batches: list[dict[str, torch.Tensor]]
    counts: torch.Tensor  # per-task completion-token counts
    tokens: int  # non-padding tokens
    samples: int
    attended: int  # Σ (position + 1) over those tokens: the causal attention work (logging/throughput.py)
    task_samples: list[int]  # per task, samples
    rounds: int = 0  # rounds of shared draws this rank has used up (data/sampler.py), after drawing these


def step_batches(micro_batches: list[dict[str, torch.Tensor]], num_tasks: int, rounds: int = 0) -> StepBatches:
    """Count on the host, where the batches are made, so the step itself never does; each micro-batch gains the
    index of its per-task loss sums (`loss_tasks`)."""
    counts = sum(label_counts(b["labels"], b["task_ids"], num_tasks) for b in micro_batches)
    per_task = sum(task_samples(b, num_tasks) for b in micro_batches).tolist()
    tokens, attended = (sum(f(b) for b in micro_batches) for f in (real_tokens, attended_positions))
    indexed = [{**b, **step_keys(b)} for b in micro_batches]
    return StepBatches(indexed, counts, tokens, sum(per_task), attended, per_task, rounds)


def step_keys(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the step derives from a micro-batch, made with it on the host: its next-token targets, the index of
    its per-task loss sums, and a packed batch's sample ids (for its attention mask)."""
    keys = {
        "targets": next_token_targets(batch["labels"]),
        "loss_tasks": loss_task_index(batch["labels"], batch["task_ids"]),
    }
    if "position_ids" in batch:
        keys["sample_ids"] = packed_sample_ids(batch["position_ids"])
    return keys


@dataclasses.dataclass
class StepResult:
    sums: list[float]  # per-task loss sums over the step, all ranks
    counts: list[float]  # per-task completion-token counts, all ranks
    loss: float  # the step's balanced loss
    tokens: int  # non-padding tokens processed, all ranks
    samples: int  # samples processed, all ranks
    attended: int  # Σ (position + 1) over those tokens: the causal attention work (logging/throughput.py)
    applied: bool  # False: the update was skipped (a non-finite loss or gradient)
    grad_norm: float | None  # before clipping, as the optimizer computed it (None where it computes none)
    weights: list[float]  # the task weights the loss took, after the balancer's reduction
    task_samples: list[int]  # per task, samples trained, all ranks
    rounds: int  # the most rounds of shared draws any rank has used up (where a new mix may start)


def host_values(values: torch.Tensor) -> list[float]:
    """The step's numbers on the host: its one host sync, marked for the profiler (mtft-bench ops)."""
    with torch.profiler.record_function(HOST_READ):
        return values.tolist()


def optimizer_step(
    engine: Engine,
    batches: StepBatches,
    weights: torch.Tensor,
    adapter: AdapterRuntime,
    reduction: Reduction,
    token_losses: TokenLosses = full_token_losses,
) -> StepResult:
    """One optimizer step over `batches` (the engine's gradient-accumulation count of micro-batches), which may
    still be on the CPU: each moves to the device just before its forward.

    A step whose loss or gradient is not finite is skipped on the device (training/guard.py, training/optimizer.py);
    then the LR schedule, the routers' loads and balancing biases do not move either.
    """
    device, world, num_tasks = engine.device, engine.world_size, batches.counts.numel()
    step_counts = all_reduce_sum(batches.counts.to(device)) if world > 1 else batches.counts.to(device)
    weights = reduction(weights, step_counts)
    coefficients = loss_coefficients(step_counts, weights)
    micro_batches, step_sums = batches.micro_batches, None
    for batch in micro_batches:
        batch = on_device(batch, device)
        loss, sums = micro_batch_loss(engine, batch, coefficients, adapter, len(micro_batches), token_losses)
        engine.backward(loss)
        step_sums = sums.detach() if step_sums is None else step_sums + sums.detach()
    local = [batches.tokens, batches.samples, batches.attended, *batches.task_samples]
    if world > 1:  # one all-reduce for the sums and the host's counts; each rank's rounds in a slot of its own
        rounds = [0] * world
        rounds[engine.rank] = batches.rounds
        local = torch.tensor(local + rounds, device=device, dtype=torch.float64)
        summed = all_reduce_sum(torch.cat([step_sums, local]))
        step_sums, local = summed[:num_tasks], summed[num_tasks:]
    numbers = [step_sums, step_counts, weights, engine.outcome(), *([local] if world > 1 else [])]
    values = host_values(torch.cat(numbers))
    n = num_tasks
    norm, skipped = values[3 * n : 3 * n + 2]
    local = [int(v) for v in values[3 * n + 2 :]] if world > 1 else [*local, batches.rounds]
    tokens, samples, attended = local[:3]
    per_task, rounds = local[3 : 3 + n], max(local[3 + n :])
    applied = skipped == 0.0
    engine.finish_step(applied)
    adapter.after_step(applied)
    step_loss = balanced_value(values[:n], values[n : 2 * n], values[2 * n : 3 * n])
    grad_norm = norm if engine.reports_grad_norm else None
    sums, counts, weights = values[:n], values[n : 2 * n], values[2 * n : 3 * n]
    counted = (tokens, samples, attended)
    return StepResult(sums, counts, step_loss, *counted, applied, grad_norm, weights, per_task, rounds)


def balanced_value(sums: list[float], counts: list[float], weights: list[float]) -> float:
    """Σ_t w_t·S_t/N_t / Σ_t w_t over the present tasks, on the host (training/losses.py `balanced_loss`)."""
    present = [(s, c, w) for s, c, w in zip(sums, counts, weights, strict=True) if c > 0]
    weight_sum = sum(w for _, _, w in present)
    if weight_sum <= 0:
        return 0.0 * sum(sums)
    return sum(w * s / c for s, c, w in present) / weight_sum


def on_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The micro-batch on the device, but for its labels: the step reads its next-token targets instead."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "labels"}


def micro_batch_loss(
    runner: ModelRunner,
    batch: dict[str, torch.Tensor],
    coefficients: torch.Tensor,
    adapter: AdapterRuntime,
    micro_batches: int,
    token_losses: TokenLosses = full_token_losses,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(this micro-batch's share of the balanced step loss plus the adapter's auxiliary loss, its per-task sums)."""
    adapter.before_forward(batch)
    inputs = attention_inputs(runner.module, model_inputs(batch), batch.get("sample_ids"))
    losses = token_losses(runner, inputs, batch["targets"])
    sums = task_loss_sums(losses, batch["loss_tasks"], len(coefficients))
    loss, aux = torch.dot(coefficients, sums), adapter.aux_loss()
    if isinstance(aux, torch.Tensor) or aux:  # 0.0: no auxiliary loss, and no op for it
        loss = loss + aux / micro_batches
    return loss, sums


def first_nonfinite(
    engine: Engine, result: StepResult, micro_batches: StepBatches, names: list[str], adapter: AdapterRuntime
) -> str:
    """What made a skipped step non-finite, in words: a task's loss, or the first parameters whose gradient is
    not finite. Collective; recomputes the step's gradients once, only when the run is about to stop."""
    losses = nonfinite_losses(result.sums, names)
    if losses:
        return f"the loss of task{'s' if len(losses) > 1 else ''} " + ", ".join(losses)
    norm = f"the gradient norm ({result.grad_norm})" if result.grad_norm is not None else "the gradients"
    if is_sharded(engine):
        return f"{norm}; parameter names are not available under ZeRO-3 (deepspeed=zero2 shows them)"
    counts = torch.tensor(result.counts, device=engine.device)
    coefficients = loss_coefficients(counts, torch.tensor(result.weights, device=engine.device))
    bad: list[str] = []
    model_alone = PlainRunner.alone(engine.module)  # forwards outside DeepSpeed's engine: its hooks stay out
    for batch in micro_batches.micro_batches:
        batch = on_device(batch, engine.device)
        loss, _ = micro_batch_loss(model_alone, batch, coefficients, adapter, 1)
        bad += [name for name in nonfinite_gradients(engine.module, loss) if name not in bad]
    bad = gather_names(bad)
    if bad:
        return f"{norm}: non-finite gradients of {', '.join(bad[:5])}"
    if not math.isfinite(result.grad_norm or 0.0):
        return f"{norm}, though no single gradient is non-finite when recomputed without loss scaling (fp16?)"
    return f"{norm}: DeepSpeed's overflow check skipped the update"
