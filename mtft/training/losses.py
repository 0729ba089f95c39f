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


def token_losses(logits_BTV: torch.Tensor, labels_BT: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy per position (B, T-1); 0 where the label is ignored."""
    logits = logits_BTV[:, :-1].float()
    targets = labels_BT[:, 1:]
    losses = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE, reduction="none"
    )
    return losses.view(targets.shape)


def per_task_sums(
    losses_BT: torch.Tensor, labels_BT: torch.Tensor, task_ids_BT: torch.Tensor, num_tasks: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss sum, token count) per task over the predicted positions; labels/task ids unshifted as in the batch.
    By masks, not by selecting the counted tokens: a selection's size is data-dependent and would make the host
    wait for the device."""
    counted = labels_BT[:, 1:] != IGNORE
    tasks = torch.where(counted, task_ids_BT[:, 1:], 0).flatten()
    zeros = torch.zeros(num_tasks, dtype=losses_BT.dtype, device=losses_BT.device)
    sums = zeros.index_add(0, tasks, torch.where(counted, losses_BT, 0.0).flatten())
    counts = zeros.index_add(0, tasks, counted.flatten().to(losses_BT.dtype))
    return sums, counts


def label_counts(labels_BT: torch.Tensor, task_ids_BT: torch.Tensor, num_tasks: int) -> torch.Tensor:
    """Completion tokens per task in a batch (counted before any forward, to normalise the whole step)."""
    counted = labels_BT[:, 1:] != IGNORE
    return torch.bincount(task_ids_BT[:, 1:][counted], minlength=num_tasks).float()


def balanced_loss(sums: torch.Tensor, step_counts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """This micro-batch's share of Σ_t w_t·L_t / Σ_t w_t (see the module docstring). Tasks with no tokens in the
    step take no part; if every present task has weight 0 the loss is 0 (and so is the gradient)."""
    present = step_counts > 0
    weight_sum = torch.where(present, weights, 0.0).sum()
    per_task = torch.where(present, sums / step_counts.clamp(min=1), torch.zeros_like(sums))
    # no `if` on a device value (the host would wait); a clamped divisor keeps the unused branch finite
    return torch.where(weight_sum > 0, (weights * per_task).sum() / weight_sum.clamp(min=1e-30), sums.sum() * 0.0)
