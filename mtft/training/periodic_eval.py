"""The evaluations inside a training run, every `trainer.eval_steps`: per-task validation loss (the mean token
cross-entropy over the given validation batches, exact over ranks) and scored sample generations, when they are
due. A saved model is evaluated after training by training/offline_eval.py (`mtft-eval`); both generate and score
with eval/."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from mtft.adapters.base import AdapterRuntime
from mtft.config.train import TrainConfig
from mtft.data.batches import validation_batches, validation_rounds
from mtft.data.collate import model_inputs
from mtft.distributed import all_reduce_sum
from mtft.eval.generation import COLUMNS as GENERATION_COLUMNS
from mtft.eval.generation import Decoding, Ranks, metric_means, scored_generations
from mtft.logging.progress import Progress
from mtft.logging.run_logger import RunLogger
from mtft.models import eval_mode
from mtft.training.components import ModelAndTasks
from mtft.training.engine import Engine, generation_is_collective
from mtft.training.losses import per_task_sums, token_losses
from mtft.training.model_runner import ModelRunner


@torch.no_grad()
def validation_losses(
    runner: ModelRunner, batches: Iterable[dict[str, torch.Tensor]], task_names: list[str], adapter: AdapterRuntime
) -> dict[str, float]:
    """Each rank evaluates its own batches; token sums and counts are all-reduced. Tasks with no tokens anywhere
    are absent from the result."""
    num_tasks = len(task_names)
    device = runner.device
    totals = torch.zeros(2, num_tasks, device=device)
    with eval_mode(runner):
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            adapter.before_forward(batch)
            logits = runner(**model_inputs(batch)).logits
            losses = token_losses(logits, batch["labels"])
            totals += torch.stack(per_task_sums(losses, batch["labels"], batch["task_ids"], num_tasks))
    sums, counts = all_reduce_sum(totals)
    return {name: float(sums[i] / counts[i]) for i, name in enumerate(task_names) if counts[i] > 0}


class Evaluator:
    """The run's evaluations: when one is due, every task's validation loss, and sample generations on the first
    `trainer.eval_generations` validation prompts of each task, made and scored as mtft-eval makes them."""

    def __init__(self, engine: Engine, built: ModelAndTasks, cfg: TrainConfig, rank: int, world_size: int):
        """`built`: the run's tokenizer, tasks and adapter runtime."""
        self.engine, self.adapter, self.tokenizer, self.tasks = engine, built.adapter, built.tokenizer, built.tasks
        self.trainer, self.specs, self.ranks = cfg.trainer, cfg.data.tasks, Ranks(rank, world_size)
        self.names = [task.name for task in self.tasks]

    def due(self, step: int) -> bool:
        return step % self.trainer.eval_steps == 0 or step == self.trainer.max_steps

    def losses_of(self, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Each task's loss over these batches (a balancer's few validation micro-batches, or a step's own)."""
        return validation_losses(self.engine, batches, self.names, self.adapter)

    def losses(self, progress: Progress) -> dict[str, float]:
        """Every task's whole validation split, this rank's share of it."""
        t, pad, rank, world = self.trainer, self.tokenizer.pad_token_id, self.ranks.rank, self.ranks.world_size
        splits = validation_batches(self.tasks, t.eval_batch_size, pad, rank, world)
        count = sum(validation_rounds(task, t.eval_batch_size, world) for task in self.tasks)
        return validation_losses(self.engine, progress.evaluating(splits, count), self.names, self.adapter)

    def generations(self, logger: RunLogger, step: int) -> dict[str, dict[str, float]]:
        """The rows to the logger (generations.jsonl), and each task's metric means ({} when none are asked for).
        Collective under ZeRO-3: every rank generates its share, rank 0 logs the one-rank rows."""
        t = self.trainer
        if not t.eval_generations:
            return {}
        ranks = Ranks(self.ranks.rank, self.ranks.world_size, generation_is_collective(self.engine))
        decoding = Decoding(t.max_new_tokens, t.eval_batch_size, per_task=t.eval_generations)
        rows = scored_generations(self.engine.module, self.tokenizer, self.tasks, self.specs, decoding, ranks)
        table = [[row[column] for column in GENERATION_COLUMNS] for row in rows]
        logger.table("generations", GENERATION_COLUMNS, table, step, save=True)
        return {name: metric_means(rows, name) for name in self.names}
