"""Evaluating a saved model per task, outside a training run: validation loss and perplexity, and generation
metrics on the validation prompts. `mtft-eval` (cli/eval.py) is the command line over `evaluate`; the evaluations
during a run are training/periodic_eval.py's, and both generate and score with eval/.

Each validation sample's loss is kept too (sample_losses.jsonl: its token-loss sum and token count), so a task's
loss over any subset of its samples, such as a bootstrap's resample, is Σ loss_sum / Σ tokens; the task's
val_loss is that over all of them.

The data is the run's own (its config.yaml, the same seed, so the same validation split) unless another data
config is given. Each task's validation samples are split into prompt and reference at the first answer (as
the sample generations during training are); outputs are generated in batches, left-padded, greedy by default,
and stop at the chat turn's end.

Under torchrun (or DeepSpeed's launcher) the evaluation is data-parallel and gives the one-rank numbers: each
rank computes the loss on its share of every task's validation samples (token sums and counts all-reduced, as
training validates) and generates its share of the batches; rank 0 gathers the rows in the one-rank order and
alone writes the files. Under ZeRO-3 each rank holds a shard of every parameter and generation runs in step.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mtft.config.convert import from_dict
from mtft.config.sections import TrainerConfig
from mtft.data.batches import validation_batches, validation_rounds
from mtft.data.collate import model_inputs
from mtft.data.config import DataConfig
from mtft.data.tasks import TaskData, load_tasks
from mtft.data.tokenize import IGNORE
from mtft.distributed import gather_lists, rank_zero_first
from mtft.errors import check
from mtft.eval.generation import Decoding, Ranks, metric_means, scored_generations
from mtft.eval.harness import Harness, harness_results
from mtft.logging.console import terminal_bars
from mtft.models import eval_mode
from mtft.training.engine import init_distributed, partitioned_for_inference
from mtft.training.inference import BaseModel, load_base, load_trained, read_yaml
from mtft.training.losses import next_token_targets, token_losses
from mtft.training.model_runner import ModelRunner, PlainRunner

SAMPLE_LOSSES = "sample_losses.jsonl"


@dataclass
class EvalSettings:
    batch_size: int = 16
    max_new_tokens: int = 64
    max_samples: int | None = None  # per task, the first N validation samples; None: all of them
    do_sample: bool = False
    temperature: float = 1.0
    seed: int = 0  # sampling is reseeded per batch from it: the same draws for any number of ranks
    # partition the parameters over the ranks with ZeRO-3 (generation then runs in step on every rank);
    # None: when the run trained under ZeRO-3 (deepspeed.stage=3) and there are several ranks
    zero3: bool | None = None
    # seconds a rank waits for its peers in a collective before the evaluation ends: trainer.collective_timeout's
    collective_timeout: float = TrainerConfig.collective_timeout
    harness_tasks: str | None = None  # lm-eval tasks, comma-separated (the `eval` extra; eval/harness.py); one rank
    harness_include: str | None = None  # a folder of your own lm-eval task YAMLs
    harness_limit: int | None = None  # documents per lm-eval task; None: all
    harness_fewshot: int | None = None

    def decoding(self, progress: bool) -> Decoding:
        return Decoding(
            self.max_new_tokens,
            self.batch_size,
            self.do_sample,
            self.temperature,
            self.seed,
            per_task=self.max_samples,
            progress=progress,
        )


def evaluate(
    checkpoint: Path | None,
    out: Path,
    settings: EvalSettings,
    config: Path | None = None,
    data: Path | None = None,
    base: BaseModel | None = None,
) -> dict[str, Any]:
    """Evaluate `checkpoint` (RUN/checkpoint-N, or a directory `mtft-export` wrote together with `config`, the
    run's config.yaml) on the run's data, or on `data` (a data config YAML); rank 0 writes eval.json,
    predictions.jsonl and sample_losses.jsonl to `out`. Returns eval.json's content (on every rank). `base`
    instead of a checkpoint: a model that mtft did not train (training/inference.py `load_base`), scored on
    `data`.

    Launched with several ranks (WORLD_SIZE > 1), it joins the process group as training does; `settings.zero3`
    partitions the model over the ranks (see EvalSettings)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    check(launched == 1 or not settings.harness_tasks, "harness_tasks", "lm-eval tasks run on one rank only")
    rank, world = init_distributed(settings.collective_timeout) if launched > 1 or settings.zero3 else (0, 1)
    bars = terminal_bars("auto", rank)  # as mtft-train's default: a file or a pipe gets no `\r` chains
    check(base is None or data is not None, "data", "a base model has no run to take tasks from: pass data=FILE.yaml")
    if base is not None:
        trained = load_base(base, from_dict(DataConfig, read_yaml(data, "data"), "data"))
    else:
        trained = load_trained(checkpoint, config)
    model, tokenizer, runtime, cfg = trained.model, trained.tokenizer, trained.runtime, trained.cfg
    sharded = settings.zero3 if settings.zero3 is not None else cfg.deepspeed.stage == 3 and world > 1
    runner = partitioned_for_inference(model, cfg, world) if sharded else PlainRunner.alone(model)
    model = runner.module
    if data is not None:
        cfg.data = from_dict(DataConfig, read_yaml(data, "data"), "data")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    with rank_zero_first():  # one rank tokenizes into the cache; the others read it
        tasks = load_tasks(cfg.data, tokenizer, cfg.trainer.seed)
    # only the validation samples are evaluated: only they need routing inputs (e.g. MoR1E's prior)
    tasks = [TaskData(t.name, [], t.val[: settings.max_samples or None], t.report) for t in tasks]
    runtime.prepare_inference(model, tasks, tokenizer.pad_token_id)

    sample_losses = _sample_losses(runner, runtime, tokenizer, tasks, settings, (rank, world), bars)
    losses = _task_losses(sample_losses)
    ranks = Ranks(rank, world, synced=sharded and world > 1)
    predictions = scored_generations(model, tokenizer, tasks, cfg.data.tasks, settings.decoding(bars), ranks)
    results = {task.name: _task_result(task, losses, predictions) for task in tasks}
    harness = _harness(model, tokenizer, settings) if settings.harness_tasks else None
    report = {
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "model": cfg.model.name_or_path,
        "adapter": trained.adapter,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": str(next(model.parameters()).device),
        "ranks": world,
        "zero3": sharded,
        "settings": vars(settings),
        "tasks": results,
        **({"harness": harness} if harness is not None else {}),
    }
    if rank == 0:
        (out / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in predictions))
        (out / SAMPLE_LOSSES).write_text("".join(json.dumps(row) + "\n" for row in sample_losses))
        (out / "eval.json").write_text(json.dumps(report, indent=2))
    return report


@torch.no_grad()
def _sample_losses(
    runner: ModelRunner,
    runtime,
    tokenizer,
    tasks: list[TaskData],
    settings: EvalSettings,
    ranks: tuple[int, int],
    bars: bool,
) -> list[dict[str, Any]]:
    """Each validation sample's loss: rows {task, index (in the task's validation split), loss_sum, tokens}, in the
    one-rank order. Each rank computes its share of the batches (`validation_batches`, whose filler batches keep
    a ZeRO-3 forward collective; a bar where `bars`, rank 0's on a terminal) and every rank gets all the rows."""
    rank, world = ranks
    device = runner.device
    batches = validation_batches(tasks, settings.batch_size, tokenizer.pad_token_id, rank, world)
    count = sum(validation_rounds(task, settings.batch_size, world) for task in tasks)
    batches = tqdm(batches, total=count, desc="loss", leave=False, disable=not bars)
    rows = []
    with eval_mode(runner):
        for (task, indices), batch in zip(_batch_indices(tasks, settings.batch_size, ranks), batches, strict=True):
            batch = {k: v.to(device) for k, v in batch.items()}
            runtime.before_forward(batch)
            labels_BT = batch["labels"]
            losses_BT = token_losses(runner(**model_inputs(batch)).logits, labels_BT).view(labels_BT.shape)
            tokens_BT = (next_token_targets(labels_BT) != IGNORE).view(labels_BT.shape)
            sums, counts = losses_BT.sum(-1).tolist()[: len(indices)], tokens_BT.sum(-1).tolist()[: len(indices)]
            for index, loss_sum, tokens in zip(indices, sums, counts, strict=True):  # a filler batch's one row: none
                rows.append({"task": task, "index": index, "loss_sum": loss_sum, "tokens": tokens})
    order = {task.name: position for position, task in enumerate(tasks)}
    return sorted(gather_lists(rows), key=lambda row: (order[row["task"]], row["index"]))


def _batch_indices(tasks: list[TaskData], batch_size: int, ranks: tuple[int, int]):
    """(task, validation indices) of each batch that `validation_batches` yields on this rank, in its order; a
    filler batch has none."""
    rank, world = ranks
    for task in tasks:
        mine = list(range(rank, len(task.val), world))
        for start in range(0, validation_rounds(task, batch_size, world) * batch_size, batch_size):
            yield task.name, mine[start : start + batch_size]


def _task_losses(sample_losses: list[dict[str, Any]]) -> dict[str, float]:
    """Each task's validation loss, the mean token loss over all its samples; a task with no tokens is absent."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for row in sample_losses:
        sums[row["task"]] = sums.get(row["task"], 0.0) + row["loss_sum"]
        counts[row["task"]] = counts.get(row["task"], 0) + row["tokens"]
    return {task: sums[task] / counts[task] for task in sums if counts[task] > 0}


def _task_result(task: TaskData, losses: dict[str, float], predictions: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "val_loss": losses.get(task.name, math.nan),
        "perplexity": math.exp(losses[task.name]) if task.name in losses else math.nan,
        "val_samples": len(task.val),
        "generated": sum(r["task"] == task.name for r in predictions),
        **metric_means(predictions, task.name),
    }


def _harness(model, tokenizer, settings: EvalSettings) -> dict[str, dict]:
    include = Path(settings.harness_include) if settings.harness_include else None
    names = [name.strip() for name in settings.harness_tasks.split(",") if name.strip()]
    request = Harness(names, include, settings.harness_limit, settings.harness_fewshot, settings.batch_size)
    return harness_results(model, tokenizer, request)


def print_table(report: dict[str, Any]) -> None:
    fixed = {"val_loss", "perplexity", "val_samples", "generated"}
    metrics = sorted({k for r in report["tasks"].values() for k in r} - fixed)
    print(f"\n{'task':<16}{'val loss':>10}{'ppl':>10}{'samples':>9}" + "".join(f"{m:>13}" for m in metrics))
    for name, r in report["tasks"].items():
        print(f"{name:<16}{r['val_loss']:>10.4f}{r['perplexity']:>10.3f}{r['generated']:>9}", end="")
        print("".join(f"{r[m]:>13.4f}" if m in r else f"{'-':>13}" for m in metrics))
    for task, values in report.get("harness", {}).items():
        print(f"lm-eval {task}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float)))
