"""Evaluating a trained checkpoint per task: validation loss and perplexity, and generation metrics on the
validation prompts. `mtft-eval` (cli/eval.py) is the command line over `evaluate`.

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
from mtft.data.batches import validation_batches, validation_rounds
from mtft.data.config import DataConfig
from mtft.data.tasks import TaskData, load_tasks
from mtft.distributed import rank_zero_first
from mtft.errors import check
from mtft.eval.generation import Decoding, Ranks, metric_means, scored_generations
from mtft.eval.harness import Harness, harness_results
from mtft.training.engine import init_distributed, partitioned_for_inference
from mtft.training.inference import BaseModel, load_base, load_trained, read_yaml
from mtft.training.validation import validation_losses


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
    run's config.yaml) on the run's data, or on `data` (a data config YAML); rank 0 writes eval.json and
    predictions.jsonl to `out`. Returns eval.json's content (on every rank). `base` instead of a checkpoint: a
    model that mtft did not train (training/inference.py `load_base`), scored on `data`.

    Launched with several ranks (WORLD_SIZE > 1), it joins the process group as training does; `settings.zero3`
    partitions the model over the ranks (see EvalSettings)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    check(launched == 1 or not settings.harness_tasks, "harness_tasks", "lm-eval tasks run on one rank only")
    rank, world = init_distributed() if launched > 1 or settings.zero3 else (0, 1)
    check(base is None or data is not None, "data", "a base model has no run to take tasks from: pass data=FILE.yaml")
    if base is not None:
        trained = load_base(base, from_dict(DataConfig, read_yaml(data, "data"), "data"))
    else:
        trained = load_trained(checkpoint, config)
    model, tokenizer, runtime, cfg = trained.model, trained.tokenizer, trained.runtime, trained.cfg
    sharded = settings.zero3 if settings.zero3 is not None else cfg.deepspeed.stage == 3 and world > 1
    engine = partitioned_for_inference(model, cfg, world) if sharded else model  # what runs the loss forwards
    model = engine.module if sharded else model
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

    losses = _losses(engine, runtime, tokenizer, tasks, settings, (rank, world))
    ranks = Ranks(rank, world, synced=sharded and world > 1)
    predictions = scored_generations(model, tokenizer, tasks, cfg.data.tasks, settings.decoding(rank == 0), ranks)
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
        (out / "eval.json").write_text(json.dumps(report, indent=2))
    return report


def _losses(engine, runtime, tokenizer, tasks: list[TaskData], settings: EvalSettings, ranks: tuple[int, int]):
    """Each task's validation loss over its samples, this rank's share of the batches (a bar on rank 0)."""
    rank, world = ranks
    names = [task.name for task in tasks]
    batches = validation_batches(tasks, settings.batch_size, tokenizer.pad_token_id, rank, world)
    count = sum(validation_rounds(task, settings.batch_size, world) for task in tasks)
    batches = tqdm(batches, total=count, desc="loss", leave=False, disable=rank != 0)
    return validation_losses(engine, batches, names, runtime)


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
