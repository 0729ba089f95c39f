"""The training recipe, top to bottom: setup, then one plain loop of optimizer steps on the DeepSpeed engine.

Each optimizer step: draw its micro-batches, count each task's completion tokens over the whole step (all
ranks), then forward/backward each micro-batch with the balanced loss (training/losses.py), then let the
balancer observe the step's per-task losses. Validation, logging and checkpoints happen at their intervals.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import datasets
import torch
import yaml
from transformers import set_seed

from mtft.adapters import ADAPTERS
from mtft.adapters.base import count_parameters
from mtft.balancers import build_balancer
from mtft.config.train import TrainConfig
from mtft.data.batches import MixedBatches, ValidationCycle, validation_batches, validation_rounds
from mtft.data.sampler import mixing_probabilities
from mtft.data.tasks import load_tasks
from mtft.data.tokenize import check_max_seq_len
from mtft.distributed import rank_zero_first, same_on_all_ranks
from mtft.errors import ConfigError
from mtft.eval.generation import COLUMNS as GENERATION_COLUMNS
from mtft.eval.generation import sample_generations
from mtft.logging import build_run_logger
from mtft.logging.progress import Progress, use_bars
from mtft.logging.secrets import redact
from mtft.logging.throughput import ThroughputWindow, peak_flops
from mtft.models import load_model, load_tokenizer
from mtft.training.engine import (
    build_engine,
    deepspeed_config,
    generation_is_collective,
    init_distributed,
    sharded_loading,
)
from mtft.training.guard import (
    NumericalGuard,
    TrainingDiverged,
    nonfinite_losses,
    nonfinite_parameters,
    nonfinite_weights_message,
    skip_cause,
)
from mtft.training.losses import balanced_loss
from mtft.training.preemption import Preemption
from mtft.training.state import (
    complete_checkpoints,
    find_resume_checkpoint,
    input_changes,
    load_checkpoint,
    prepare_output_dir,
    prune_checkpoints,
    refuse_changes,
    sample_changes,
    save_checkpoint,
)
from mtft.training.step import Reduction, first_nonfinite, optimizer_step
from mtft.training.summary import data_report, data_report_table, print_data_report, print_summary, summary
from mtft.training.validation import validation_losses


def train(cfg: TrainConfig) -> dict[str, Any]:
    # ---- setup ------------------------------------------------------------------------------------------------
    t = cfg.trainer
    rank, world_size = init_distributed()
    output_dir = Path(same_on_all_ranks(t.output_dir))  # the default holds a timestamp each rank resolved alone
    resume_from = find_resume_checkpoint(output_dir, t.resume) if t.resume else None
    run_inputs = {"data": dataclasses.asdict(cfg.data), "trainer": {"seed": t.seed}}  # what the data stream follows
    changes = input_changes(resume_from, run_inputs) if resume_from is not None else []
    refuse_changes(resume_from, changes, t.resume_allow_changes)  # before the model loads
    if resume_from is None and (output_dir / "metrics.jsonl").exists() and t.resume != "auto":
        raise ConfigError(
            "trainer.output_dir", f"{output_dir} already holds a run; set trainer.resume=auto or pick a new directory"
        )
    prepare_output_dir(output_dir)  # unwritable: an error now, not at the first checkpoint
    set_seed(t.seed)
    if not use_bars(cfg.logger.progress, rank):  # tokenizing bars only where a person watches a terminal
        datasets.disable_progress_bars()

    tokenizer = load_tokenizer(cfg.model)
    check_max_seq_len(cfg.data, tokenizer)  # a config error, reported before any weights load
    with sharded_loading(deepspeed_config(cfg, world_size)):  # under ZeRO-3 no rank ever holds the whole model
        model = load_model(cfg.model, tokenizer)
    with rank_zero_first():  # one rank tokenizes into the cache; the others read it
        tasks = load_tasks(cfg.data, tokenizer, t.seed)
    names = [task.name for task in tasks]
    method = ADAPTERS[cfg.adapter.name]
    model = method.inject(model, cfg.adapter)
    adapter = method.runtime(model, cfg.adapter)  # the loop's one handle on the adapter
    trainable, total = count_parameters(model)
    engine = build_engine(model, cfg, world_size)
    adapter.prepare(engine.module, tasks, tokenizer.pad_token_id, t.seed)
    balancer = build_balancer(cfg.balancer, names)
    guard = NumericalGuard(t.max_bad_steps)
    probabilities = mixing_probabilities([len(task.train) for task in tasks], cfg.data)
    pack_to = cfg.data.max_seq_len if cfg.data.packing else None
    batches = MixedBatches(
        tasks, probabilities, t.micro_batch_size, tokenizer.pad_token_id, t.seed, rank, world_size, pack_to
    )
    run_config = redact(dataclasses.asdict(cfg))  # no API key or token from the environment in any record
    logger = build_run_logger(cfg.logger, output_dir, run_config, rank)
    throughput = ThroughputWindow(
        engine.module, world_size, peak_flops(cfg.logger.peak_tflops, cfg.deepspeed.precision)
    )

    cycle_batch = balancer.val_batch_size(t.eval_batch_size)
    val_cycle = ValidationCycle(tasks, cycle_batch, tokenizer.pad_token_id, t.seed, rank, world_size)

    def validate() -> dict[str, float]:  # every task's whole validation split
        splits = validation_batches(tasks, t.eval_batch_size, tokenizer.pad_token_id, rank, world_size)
        count = sum(validation_rounds(task, t.eval_batch_size, world_size) for task in tasks)
        return validation_losses(engine, progress.evaluating(splits, count), names, adapter)

    def generations() -> None:  # collective under ZeRO-3: every rank generates, rank 0 logs
        if t.eval_generations:
            synced = generation_is_collective(engine)
            rows = sample_generations(engine.module, tasks, tokenizer, t.eval_generations, t.max_new_tokens, synced)
            logger.table("generations", GENERATION_COLUMNS, rows, step, save=True)

    def balancer_round(batches: int) -> dict[str, float]:  # a few mixed micro-batches, as the balancer asks
        return validation_losses(engine, (val_cycle.next() for _ in range(batches)), names, adapter)

    step, tokens_seen, initial_val = 0, 0, {}
    if resume_from is not None:
        state, rank_state = load_checkpoint(engine, resume_from)
        step, tokens_seen = state["step"], state["tokens"]
        guard.load_state_dict(state["guard"])
        sizes = [len(task.train) for task in tasks]
        more = [c for c in sample_changes(rank_state["batches"]["sampler"], names, sizes, t.seed) if c not in changes]
        refuse_changes(resume_from, more, t.resume_allow_changes)
        if not changes and not more:  # the same data: continue the stream exactly where it stopped
            initial_val = state["initial_val_losses"]
            balancer.load_state_dict(state["balancer"])
            batches.load_state_dict(rank_state["batches"])
            val_cycle.cursor = rank_state["val_cycle"]
    logger.drop_after(step)  # records a crashed run wrote past its last checkpoint, or an abandoned fresh start
    report = data_report(tasks, probabilities)
    if rank == 0:
        (output_dir / "config.yaml").write_text(yaml.safe_dump(run_config, sort_keys=False))
        (output_dir / "data_report.json").write_text(json.dumps(report, indent=2))
        print_data_report(report)
        print(f"mtft: {len(names)} tasks, {trainable:,} of {total:,} parameters trainable, {world_size} rank(s)")
    logger.table("data_report", *data_report_table(report), step)
    progress = Progress(cfg.logger.progress, rank, t.max_steps, step)
    if not initial_val:
        initial_val = validate()
        balancer.start(initial_val)

    def logs_at(n: int) -> bool:  # a metrics record at step n
        return n % t.logging_steps == 0 or n % t.eval_steps == 0 or n == t.max_steps

    def checkpoint() -> None:
        mtft_state = {
            "step": step,
            "tokens": tokens_seen,
            "initial_val_losses": initial_val,
            "balancer": balancer.state_dict(),
            "guard": guard.state_dict(),
        }
        # the weights this rank trains with: every rank must agree, and a checkpoint makes that checkable
        rank_state = {"batches": batches.state_dict(), "val_cycle": val_cycle.cursor, "weights": balancer.weights()}
        save_checkpoint(engine, output_dir, step, mtft_state, rank_state, cfg.adapter, tokenizer, run_inputs)
        prune_checkpoints(output_dir, t.save_total_limit, protect=resume_from)

    def write_record(step: int, weights: dict[str, float], val_losses: dict[str, float], grad_norm: float | None):
        record = _record(step, names, window, weights, val_losses, engine, balancer.reduction)
        record.update(throughput.fields())
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        record["train/skipped_steps"] = guard.skipped
        record.update({f"balancer/{k}": v for k, v in balancer.metrics().items()})
        record.update(adapter.metrics())
        logger.log(record)
        progress.logged(record)
        window.zero_()

    def stop_run(message: str) -> NoReturn:  # the run cannot go on (training/guard.py): close up, fail loudly
        progress.close()
        preemption.restore()
        logger.finish()
        raise TrainingDiverged(message)

    # ---- loop -------------------------------------------------------------------------------------------------
    num_tasks = len(names)
    window = torch.zeros(2, num_tasks)  # per-task loss sums and token counts since the last log record
    run_start = time.perf_counter()
    val_losses: dict[str, float] = {}
    engine.train()
    throughput.reset()
    preemption = Preemption()
    while step < t.max_steps:
        micro_batches = [_to(batches.next(), engine.device) for _ in range(t.grad_accum_steps)]
        weights_now = balancer.weights()
        weights = torch.tensor([weights_now[n] for n in names], device=engine.device)
        result = optimizer_step(engine, micro_batches, weights, num_tasks, adapter, balancer.reduction)
        step += 1
        throughput.add(result.tokens, result.samples, result.attended)
        tokens_seen += result.tokens
        if result.applied:
            guard.step_applied()
            present = result.counts > 0
            train_losses = {n: float(result.sums[i] / result.counts[i]) for i, n in enumerate(names) if present[i]}
            window += torch.stack([result.sums, result.counts])
            progress.step(result.loss, train_losses)
        else:  # nothing learnt from this step: counted, shown, and the run stops after too many in a row
            stop = guard.step_skipped(step)
            in_batch = [n for i, n in enumerate(names) if result.counts[i] > 0]
            cause = skip_cause(nonfinite_losses(result.sums, names), result.grad_norm)
            progress.skipped(step, cause, in_batch, guard.in_a_row, guard.skipped)
            if stop:
                cause = first_nonfinite(engine, result, micro_batches, weights, names, adapter, balancer.reduction)
                write_record(step, weights_now, {}, result.grad_norm)  # the skipped steps, in metrics.jsonl too
                stop_run(guard.stop_message(step, cause, _last_checkpoint(output_dir, resume_from)))

        evaluate = step % t.eval_steps == 0 or step == t.max_steps
        with throughput.paused():
            val_losses = validate() if evaluate else {}
            if evaluate:
                generations()
        if result.applied:  # a skipped step leaves the balancer as it was
            with throughput.paused():
                balancer_val = val_losses
                if not balancer_val and (wanted := balancer.val_request(step)):
                    balancer_val = balancer_round(wanted)
            balancer.observe(step, train_losses, balancer_val or None)
            balancer.after_step(partial(validation_losses, engine, micro_batches, names, adapter))  # e.g. FAMO

        if logs_at(step):
            write_record(step, weights_now, val_losses, result.grad_norm)
        preempted = preemption.requested()
        if (t.save_steps and step % t.save_steps == 0) or step == t.max_steps or preempted:
            with throughput.paused():
                if bad := nonfinite_parameters(engine.module):  # collective; a pass over the weights, at saves only
                    stop_run(nonfinite_weights_message(step, bad, _last_checkpoint(output_dir, resume_from)))
                checkpoint()
        if preempted and step < t.max_steps:
            progress.close()
            if rank == 0:
                print(f"mtft: preempted; saved checkpoint-{step}. Resume with trainer.resume=auto", flush=True)
            preemption.restore()
            logger.finish()
            return {"preempted_at": step}

    # ---- wrap up ----------------------------------------------------------------------------------------------
    progress.close()
    preemption.restore()
    final_val = val_losses or validate()
    elapsed = time.perf_counter() - run_start
    run_summary = summary(
        tasks, step, elapsed, tokens_seen, initial_val, final_val, balancer, trainable, guard.skipped
    )
    if rank == 0:
        (output_dir / "summary.json").write_text(json.dumps(run_summary, indent=2))
        print_summary(run_summary)
        print(f"outputs in {output_dir}")
    logger.finish()
    return run_summary


def _last_checkpoint(output_dir: Path, resumed_from: Path | None) -> Path | None:
    found = complete_checkpoints(output_dir)
    return found[-1] if found else resumed_from


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _record(
    step: int,
    names: list[str],
    window: torch.Tensor,
    weights: dict[str, float],
    val_losses: dict[str, float],
    engine,
    reduction: Reduction,
) -> dict[str, Any]:
    """One metrics.jsonl line: the window's exact per-task means and the balanced loss built from them."""
    sums, counts = window
    task_losses = {n: float(sums[i] / counts[i]) for i, n in enumerate(names) if counts[i] > 0}
    weights_tensor = reduction(torch.tensor([weights[n] for n in names]), counts)
    trained = counts.sum() > 0  # not if every step since the last record was skipped
    record: dict[str, Any] = {
        "step": step,
        "loss": float(balanced_loss(sums, counts, weights_tensor)) if trained else math.nan,
        "lr": engine.get_lr()[0],
    }
    for name in names:
        if name in task_losses:
            record[f"task/{name}/loss"] = task_losses[name]
        record[f"task/{name}/weight"] = weights[name]
        if name in val_losses:
            record[f"task/{name}/val_loss"] = val_losses[name]
    return record
