"""Per-task validation loss: the mean token cross-entropy over the given validation batches, exact over ranks."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from mtft.adapters.base import AdapterRuntime
from mtft.data.collate import model_inputs
from mtft.distributed import all_reduce_sum
from mtft.training.losses import per_task_sums, token_losses


@torch.no_grad()
def validation_losses(
    engine, batches: Iterable[dict[str, torch.Tensor]], task_names: list[str], adapter: AdapterRuntime
) -> dict[str, float]:
    """Each rank evaluates its own batches; token sums and counts are all-reduced. Tasks with no tokens anywhere
    are absent from the result."""
    num_tasks = len(task_names)
    device = engine.device if hasattr(engine, "device") else next(engine.parameters()).device  # or a plain model
    totals = torch.zeros(2, num_tasks, device=device)
    was_training = getattr(engine, "module", engine).training
    engine.eval()
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        adapter.before_forward(batch)
        logits = engine(**model_inputs(batch)).logits
        losses = token_losses(logits, batch["labels"])
        totals += torch.stack(per_task_sums(losses, batch["labels"], batch["task_ids"], num_tasks))
    engine.train(was_training)
    sums, counts = all_reduce_sum(totals)
    return {name: float(sums[i] / counts[i]) for i, name in enumerate(task_names) if counts[i] > 0}
