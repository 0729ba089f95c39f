"""Per-task validation loss: the mean token cross-entropy over each task's whole validation split."""

from __future__ import annotations

import torch

from mtft.adapters.intuition import set_instance_prior
from mtft.data.batches import validation_batches
from mtft.data.collate import model_inputs
from mtft.data.tasks import TaskData
from mtft.training.engine import all_reduce_sum
from mtft.training.losses import per_task_sums, token_losses


@torch.no_grad()
def validation_losses(engine, tasks: list[TaskData], batch_size: int, pad_token_id: int) -> dict[str, float]:
    """Exact over ranks: each rank evaluates its share, and token sums and counts are all-reduced."""
    rank, world = engine.global_rank, engine.world_size
    num_tasks = len(tasks)
    totals = torch.zeros(2, num_tasks, device=engine.device)
    was_training = engine.module.training
    engine.eval()
    for batch in validation_batches(tasks, batch_size, pad_token_id, rank, world):
        batch = {k: v.to(engine.device) for k, v in batch.items()}
        set_instance_prior(engine.module, batch.get("instance_prior"))
        logits = engine(**model_inputs(batch)).logits
        sums, counts = per_task_sums(
            token_losses(logits, batch["labels"]), batch["labels"], batch["task_ids"], num_tasks
        )
        totals += torch.stack([sums, counts])
    engine.train(was_training)
    sums, counts = all_reduce_sum(totals)
    return {task.name: float(sums[i] / counts[i]) for i, task in enumerate(tasks) if counts[i] > 0}
