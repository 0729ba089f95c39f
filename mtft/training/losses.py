"""Per-task token losses and the balanced training loss.

The loss of task t over an optimizer step is the mean token cross-entropy over all of its completion tokens in
that step, on every micro-batch and every rank: L_t = S_t / N_t. The training loss is Σ_t w_t·L_t / Σ_t w_t over
the tasks present in the step (MFTCoder's "data-balanced" reduction).

To make this exact under gradient accumulation (MFTCoder only averages within a micro-batch), each micro-batch
contributes Σ_t w_t·S_t(micro) / N_t(step) / Σ_t w_t, with N_t(step) counted before the step's first forward.
Summed over micro-batches and ranks this is the loss above, so its gradient is too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtft.data.tokenize import IGNORE


def next_token_targets(labels_BT: torch.Tensor) -> torch.Tensor:
    """The label each position predicts, flat (B·T,): the labels shifted left by one, IGNORE at each row's end.
    Made on the host with the batch, so the loss needs no slicing on the device."""
    return F.pad(labels_BT[:, 1:], (0, 1), value=IGNORE).flatten()


def loss_task_index(labels_BT: torch.Tensor, task_ids_BT: torch.Tensor) -> torch.Tensor:
    """Each position's task for its loss, flat (B·T,) as `next_token_targets`; 0 where no target counts (the loss
    is 0 there). Made on the host, so the step's per-task sums are one index_add (`task_loss_sums`)."""
    tasks = F.pad(task_ids_BT[:, 1:], (0, 1), value=0)
    return torch.where(F.pad(labels_BT[:, 1:], (0, 1), value=IGNORE) != IGNORE, tasks, 0).flatten()


def target_losses(logits_BTV: torch.Tensor, targets_N: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per position, flat (B·T,), against `next_token_targets`; 0 where ignored."""
    return F.cross_entropy(logits_BTV.flatten(0, 1).float(), targets_N, ignore_index=IGNORE, reduction="none")


def token_losses(logits_BTV: torch.Tensor, labels_BT: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy per position of a batch with its labels, flat (B·T,); 0 where ignored (and at
    each row's last position, which predicts nothing)."""
    return target_losses(logits_BTV, next_token_targets(labels_BT))


def task_loss_sums(losses_N: torch.Tensor, index_N: torch.Tensor, num_tasks: int) -> torch.Tensor:
    """Per-task sums of token losses (0 where ignored, as every TokenLosses gives them), by `loss_task_index`.
    By an index, not by selecting the counted tokens: a selection's size is data-dependent and would make the host
    wait for the device."""
    return torch.zeros(num_tasks, dtype=losses_N.dtype, device=losses_N.device).index_add(0, index_N, losses_N)


def per_task_sums(
    losses_N: torch.Tensor, labels_BT: torch.Tensor, task_ids_BT: torch.Tensor, num_tasks: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss sum, token count) per task of a batch's token losses; labels and task ids as in the batch."""
    index = loss_task_index(labels_BT, task_ids_BT)
    counted = (next_token_targets(labels_BT) != IGNORE).to(losses_N.dtype)
    return task_loss_sums(losses_N, index, num_tasks), task_loss_sums(counted, index, num_tasks)


def label_counts(labels_BT: torch.Tensor, task_ids_BT: torch.Tensor, num_tasks: int) -> torch.Tensor:
    """Completion tokens per task in a batch (counted before any forward, to normalise the whole step)."""
    counted = labels_BT[:, 1:] != IGNORE
    return torch.bincount(task_ids_BT[:, 1:][counted], minlength=num_tasks).float()


def loss_coefficients(step_counts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """c_t = w_t / (N_t · Σ_present w) for the tasks present in the step, else 0: then a micro-batch's share of
    the balanced loss is c · S(micro) (one dot product), and summed over micro-batches and ranks it is `balanced_loss`.
    Every weight 0: every c_t is 0, and so are the loss and its gradient."""
    present = torch.where(step_counts > 0, weights, 0.0)
    return present / (step_counts.clamp(min=1) * present.sum().clamp(min=1e-30))


def balanced_loss(sums: torch.Tensor, step_counts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """This micro-batch's share of Σ_t w_t·L_t / Σ_t w_t (see the module docstring). Tasks with no tokens in the
    step take no part; if every present task has weight 0 the loss is 0 (and so is the gradient)."""
    present = step_counts > 0
    weight_sum = torch.where(present, weights, 0.0).sum()
    per_task = torch.where(present, sums / step_counts.clamp(min=1), torch.zeros_like(sums))
    # no `if` on a device value (the host would wait); a clamped divisor keeps the unused branch finite
    return torch.where(weight_sum > 0, (weights * per_task).sum() / weight_sum.clamp(min=1e-30), sums.sum() * 0.0)
