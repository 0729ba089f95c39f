"""The training recipe, top to bottom: setup, then one plain loop of optimizer steps on the DeepSpeed engine,
then the wrap-up (torchtune's recipes are the model).

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

from mtft.adapters import ADAPTERS, attach_runtime
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
from mtft.eval.generation import Decoding, Ranks, metric_means, scored_generations
from mtft.logging import build_run_logger
from mtft.logging.progress import Progress, use_bars
from mtft.logging.records import LossWindow, metrics_record, task_means
from mtft.logging.secrets import redact
from mtft.logging.throughput import ThroughputWindow, peak_flops
from mtft.models import compile_blocks, enable_gradient_checkpointing, load_model, load_tokenizer
from mtft.training.cross_entropy import CROSS_ENTROPY
from mtft.training.early_stopping import EarlyStopping
from mtft.training.engine import (
    build_engine,
    deepspeed_config,
    generation_is_collective,
    init_distributed,
    resolve_precision,
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
from mtft.training.step import StepBatches, StepResult, first_nonfinite, optimizer_step, step_batches
from mtft.training.summary import data_report, data_report_table, print_data_report, print_summary, summary
from mtft.training.train_state import Resumable, TrainState
from mtft.training.validation import validation_losses


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train as `cfg` says. Returns the run's summary (summary.json), or `{"preempted_at": step}` when a
    preemption signal ended it early (after a checkpoint)."""
    return TrainingRecipe(cfg).train()


class TrainingRecipe:
    """One run. `__init__` is the setup, `train` the loop, `_wrap_up` the end.

    The components are built once and never rebound, so every method may use them; what changes as the run goes
    is in `self.state` (TrainState) and in the components' own state, which `self.resumable` saves and restores.
    """

    # ---- setup ------------------------------------------------------------------------------------------------
    def __init__(self, cfg: TrainConfig):
        self.cfg, self.trainer = cfg, cfg.trainer
        self.rank, self.world_size = init_distributed()
        if cfg.deepspeed.precision == "auto":  # made concrete here, so config.yaml records what ran
            cfg.deepspeed.precision = resolve_precision("auto")
            if self.rank == 0:
                print(f"mtft: precision {cfg.deepspeed.precision} (deepspeed.precision=auto)", flush=True)
        changes = self._setup_output_dir()
        set_seed(self.trainer.seed)  # every random draw below (model init, adapter init) follows from it, in order
        if not use_bars(cfg.logger.progress, self.rank):  # tokenizing bars only where a person watches a terminal
            datasets.disable_progress_bars()
        self._setup_model_and_tasks()
        self._setup_training()
        self._setup_logging()
        self.state = TrainState()
        t = self.trainer
        self.early_stopping = EarlyStopping(
            t.early_stopping_metric, t.early_stopping_patience, t.early_stopping_min_delta
        )
        self.resumable = Resumable(
            self.state, self.guard, self.balancer, self.batches, self.val_cycle, self.early_stopping
        )
        if self.resume_from is not None:
            self._resume(changes)
        self.logger.drop_after(self.state.step)  # records a crashed run wrote past its last checkpoint
        self._write_run_files()
        self.progress = Progress(cfg.logger.progress, self.rank, self.trainer.max_steps, self.state.step)
        if not self.state.initial_val_losses:
            self.state.initial_val_losses = self._validate()
            self.balancer.start(self.state.initial_val_losses)

    def _setup_output_dir(self) -> list[str]:
        """The output directory and the checkpoint to resume from, checked before any model loads, so a mistake
        costs seconds. Returns how this run's data config and seed differ from the checkpoint's (allowed ones)."""
        t = self.trainer
        self.output_dir = Path(same_on_all_ranks(t.output_dir))  # the default holds a timestamp each rank resolved
        self.resume_from = find_resume_checkpoint(self.output_dir, t.resume) if t.resume else None
        # what the data stream follows: a resume with other values cannot continue it
        self.run_inputs = {"data": dataclasses.asdict(self.cfg.data), "trainer": {"seed": t.seed}}
        changes = input_changes(self.resume_from, self.run_inputs) if self.resume_from is not None else []
        refuse_changes(self.resume_from, changes, t.resume_allow_changes)
        if self.resume_from is None and (self.output_dir / "metrics.jsonl").exists() and t.resume != "auto":
            raise ConfigError(
                "trainer.output_dir",
                f"{self.output_dir} already holds a run; set trainer.resume=auto or pick a new directory",
            )
        prepare_output_dir(self.output_dir)  # unwritable: an error now, not at the first checkpoint
        return changes

    def _setup_model_and_tasks(self) -> None:
        """Tokenizer, base model with its adapter injected, tokenized tasks, the adapter's runtime handle, and the
        speed and memory options (gradient checkpointing, compiled layers, the per-token loss)."""
        cfg = self.cfg
        self.tokenizer = load_tokenizer(cfg.model)
        check_max_seq_len(cfg.data, self.tokenizer)  # a config error, reported before any weights load
        with sharded_loading(deepspeed_config(cfg, self.world_size)):  # under ZeRO-3 no rank holds the whole model
            model = load_model(cfg.model, self.tokenizer)
        with rank_zero_first():  # one rank tokenizes into the cache; the others read it
            self.tasks = load_tasks(cfg.data, self.tokenizer, self.trainer.seed)
        self.names = [task.name for task in self.tasks]
        method = ADAPTERS[cfg.adapter.name]
        self.model = method.inject(model, cfg.adapter)
        self.adapter = method.runtime(self.model, cfg.adapter)  # the loop's one handle on the adapter
        attach_runtime(self.model, self.adapter)  # generation finds it with the model
        if self.trainer.gradient_checkpointing:
            enable_gradient_checkpointing(self.model, self.adapter.recomputation)
        if self.trainer.compile:
            compile_blocks(self.model)
        self.token_losses = CROSS_ENTROPY[self.trainer.cross_entropy]

    def _setup_training(self) -> None:
        """The engine, the balancer and the guard, and the data streams: training batches and validation cycle."""
        cfg, t = self.cfg, self.trainer
        self.trainable, self.total = count_parameters(self.model)
        self.engine = build_engine(self.model, cfg, self.world_size)
        self.adapter.prepare(self.engine.module, self.tasks, self.tokenizer.pad_token_id, t.seed)
        self.balancer = build_balancer(cfg.balancer, self.names)
        self.guard = NumericalGuard(t.max_bad_steps)
        self.probabilities = mixing_probabilities([len(task.train) for task in self.tasks], cfg.data)
        pack_to = cfg.data.max_seq_len if cfg.data.packing else None
        pad = self.tokenizer.pad_token_id
        self.batches = MixedBatches(
            self.tasks, self.probabilities, t.micro_batch_size, pad, t.seed, self.rank, self.world_size, pack_to
        )
        cycle_batch = self.balancer.val_batch_size(t.eval_batch_size)
        self.val_cycle = ValidationCycle(self.tasks, cycle_batch, pad, t.seed, self.rank, self.world_size)

    def _setup_logging(self) -> None:
        """The run logger (metrics.jsonl and a backend), throughput, and the window of the next metrics record."""
        cfg = self.cfg
        self.run_config = redact(dataclasses.asdict(cfg))  # no API key or token from the environment in any record
        self.logger = build_run_logger(cfg.logger, self.output_dir, self.run_config, self.rank)
        peak = peak_flops(cfg.logger.peak_tflops, cfg.deepspeed.precision)
        self.throughput = ThroughputWindow(self.engine.module, self.world_size, peak)
        self.window = LossWindow(len(self.names))  # the next metrics record's per-task losses
        self.generation_scores: dict[str, dict[str, float]] = {}  # and its generation metrics, when there are any

    def _resume(self, changes: list[str]) -> None:
        """Restore the engine and every stateful object. The data stream continues only if the data is the same:
        `changes` (from the config) and what the sampler's state shows (task files edited in place)."""
        t = self.trainer
        run_state, rank_state = load_checkpoint(self.engine, self.resume_from)
        sizes = [len(task.train) for task in self.tasks]
        more = sample_changes(rank_state["batches"]["sampler"], self.names, sizes, t.seed)
        more = [change for change in more if change not in changes]
        refuse_changes(self.resume_from, more, t.resume_allow_changes)
        self.resumable.load(run_state, rank_state, same_data=not changes and not more)

    def _write_run_files(self) -> None:
        """config.yaml and data_report.json (rank 0), and the data report as the logger's first table."""
        report = data_report(self.tasks, self.probabilities)
        if self.rank == 0:
            (self.output_dir / "config.yaml").write_text(yaml.safe_dump(self.run_config, sort_keys=False))
            (self.output_dir / "data_report.json").write_text(json.dumps(report, indent=2))
            print_data_report(report)
            print(
                f"mtft: {len(self.names)} tasks, {self.trainable:,} of {self.total:,} parameters trainable, "
                f"{self.world_size} rank(s)"
            )
        self.logger.table("data_report", *data_report_table(report), self.state.step)

    # ---- loop -------------------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Optimizer steps up to trainer.max_steps, with a checkpoint every trainer.save_steps, at the end, and on
        preemption (which ends the run early)."""
        t, state = self.trainer, self.state
        run_start = time.perf_counter()
        val_losses: dict[str, float] = {}
        self.engine.train()
        self.throughput.reset()
        self.preemption = Preemption()  # from here on a SIGTERM or SIGUSR1 ends the run after a step, saved
        while state.step < t.max_steps:
            val_losses = self._train_step()
            preempted, stopping = self.preemption.requested(), self.early_stopping.should_stop()
            best_now = t.keep_best and self.early_stopping.best_step == state.step
            scheduled = (t.save_steps and state.step % t.save_steps == 0) or state.step == t.max_steps
            if scheduled or preempted or stopping or best_now:
                self._checkpoint()
            if preempted and state.step < t.max_steps:
                return self._preempted()
            if stopping:
                if self.rank == 0:
                    stop = self.early_stopping
                    print(
                        f"mtft: early stop at step {state.step}: {t.early_stopping_metric} has not improved for "
                        f"{stop.since_best} evaluations (best {stop.best_value:.6g} at step {stop.best_step})",
                        flush=True,
                    )
                break
        return self._wrap_up(val_losses, run_start)

    def _train_step(self) -> dict[str, float]:
        """One optimizer step, then what follows it at its intervals: validation and sample generations, the
        balancer's observation, a metrics record. Returns the validation losses measured ({} if none)."""
        t, state, names = self.trainer, self.state, self.names
        # on the host, counted there: the step moves them
        micro_batches = step_batches([self.batches.next() for _ in range(t.grad_accum_steps)], len(names))
        weights_now = self.balancer.weights()
        weights = torch.tensor([weights_now[n] for n in names], device=self.engine.device)
        result = optimizer_step(
            self.engine, micro_batches, weights, len(names), self.adapter, self.balancer.reduction, self.token_losses
        )
        state.step += 1
        state.tokens += result.tokens
        self.throughput.add(result.tokens, result.samples, result.attended)
        if result.applied:
            self.guard.step_applied()
            train_losses = task_means(names, result.sums, result.counts)
            self.window.add(result.sums, result.counts)
            self.progress.step(result.loss, train_losses)
        else:
            self._step_skipped(result, micro_batches, weights, weights_now)

        evaluate = state.step % t.eval_steps == 0 or state.step == t.max_steps
        with self.throughput.paused():
            val_losses = self._validate() if evaluate else {}
            if evaluate:
                self._generations()
                self.early_stopping.observe(state.step, val_losses, self.generation_scores)
        if result.applied:  # a skipped step leaves the balancer as it was
            self._observe(train_losses, val_losses, micro_batches)
        if state.step % t.logging_steps == 0 or evaluate:
            self._log(weights_now, val_losses, result.grad_norm)
        return val_losses

    def _step_skipped(
        self,
        result: StepResult,
        micro_batches: StepBatches,
        weights: torch.Tensor,
        weights_now: dict[str, float],
    ) -> None:
        """Nothing was learnt from this step: it is counted and shown, and the run stops after too many in a row."""
        step, guard, names = self.state.step, self.guard, self.names
        stop = guard.step_skipped(step)
        in_batch = [n for i, n in enumerate(names) if result.counts[i] > 0]
        cause = skip_cause(nonfinite_losses(result.sums, names), result.grad_norm)
        self.progress.skipped(step, cause, in_batch, guard.in_a_row, guard.skipped)
        if stop:
            reduction = self.balancer.reduction
            cause = first_nonfinite(self.engine, result, micro_batches, weights, names, self.adapter, reduction)
            self._log(weights_now, {}, result.grad_norm)  # the skipped steps, in metrics.jsonl too
            self._stop(guard.stop_message(step, cause, self._last_checkpoint()))

    def _observe(
        self,
        train_losses: dict[str, float],
        val_losses: dict[str, float],
        micro_batches: StepBatches,
    ) -> None:
        """Feed the balancer this step's losses, plus the validation losses it asks for when none were measured."""
        step, balancer = self.state.step, self.balancer
        with self.throughput.paused():
            balancer_val = val_losses
            if not balancer_val and (wanted := balancer.val_request(step)):
                cycle = (self.val_cycle.next() for _ in range(wanted))  # a few mixed micro-batches
                balancer_val = validation_losses(self.engine, cycle, self.names, self.adapter)
        balancer.observe(step, train_losses, balancer_val or None)
        balancer.after_step(
            partial(validation_losses, self.engine, micro_batches.micro_batches, self.names, self.adapter)
        )  # FAMO

    def _validate(self) -> dict[str, float]:
        """Every task's whole validation split."""
        t, pad = self.trainer, self.tokenizer.pad_token_id
        splits = validation_batches(self.tasks, t.eval_batch_size, pad, self.rank, self.world_size)
        count = sum(validation_rounds(task, t.eval_batch_size, self.world_size) for task in self.tasks)
        return validation_losses(self.engine, self.progress.evaluating(splits, count), self.names, self.adapter)

    def _generations(self) -> None:
        """Generations on the first `eval_generations` validation prompts of each task, as mtft-eval makes and scores
        them: the rows to generations.jsonl, each task's metric means into the next record. Collective under
        ZeRO-3: every rank generates, rank 0 logs."""
        t = self.trainer
        if t.eval_generations:
            synced = generation_is_collective(self.engine)
            rows = scored_generations(
                self.engine.module,
                self.tokenizer,
                self.tasks,
                self.cfg.data.tasks,
                t.eval_generations,
                Decoding(t.max_new_tokens, t.eval_batch_size),
                Ranks(self.rank, self.world_size, synced),  # each rank generates its share; the rows are one rank's
            )
            table = [[row[column] for column in GENERATION_COLUMNS] for row in rows]
            self.logger.table("generations", GENERATION_COLUMNS, table, self.state.step, save=True)
            self.generation_scores = {name: metric_means(rows, name) for name in self.names}

    def _log(self, weights: dict[str, float], val_losses: dict[str, float], grad_norm: float | None) -> None:
        """One metrics record over the window since the last, then a fresh window."""
        window = self.window
        record = metrics_record(
            self.state.step,
            loss=self._window_loss(weights),
            lr=self.engine.lr(),
            task_names=self.names,
            task_losses=task_means(self.names, window.sums, window.counts),
            weights=weights,
            val_losses=val_losses,
            throughput=self.throughput.fields(),
            grad_norm=grad_norm,
            skipped_steps=self.guard.skipped,
            balancer=self.balancer.metrics(),
            adapter=self.adapter.metrics(),
            generation=self.generation_scores,
        )
        self.generation_scores = {}
        self.logger.log(record)
        self.progress.logged(record)
        window.clear()

    def _window_loss(self, weights: dict[str, float]) -> float:
        """The balanced loss of the window's tokens, as a step's is of its own: NaN if every step in it was skipped."""
        sums, counts = self.window.sums, self.window.counts
        task_weights = self.balancer.reduction(torch.tensor([weights[n] for n in self.names]), counts)
        return float(balanced_loss(sums, counts, task_weights)) if counts.sum() > 0 else math.nan

    def _checkpoint(self) -> None:
        """A checkpoint, unless the weights hold non-finite values: then the run stops, the last good one intact."""
        t, step = self.trainer, self.state.step
        with self.throughput.paused():
            if bad := nonfinite_parameters(self.engine.module):  # collective; a pass over the weights, at saves only
                self._stop(nonfinite_weights_message(step, bad, self._last_checkpoint()))
            run_state, rank_state = self.resumable.run_state(), self.resumable.rank_state()
            save_checkpoint(
                self.engine,
                self.output_dir,
                step,
                run_state,
                rank_state,
                self.cfg.adapter,
                self.tokenizer,
                self.run_inputs,
            )
            best = self.early_stopping.best_step if t.keep_best else None
            best_dir = self.output_dir / f"checkpoint-{best}" if best is not None else None
            prune_checkpoints(self.output_dir, t.save_total_limit, protect=[self.resume_from, best_dir])

    def _last_checkpoint(self) -> Path | None:
        found = complete_checkpoints(self.output_dir)
        return found[-1] if found else self.resume_from

    # ---- wrap up ----------------------------------------------------------------------------------------------
    def _wrap_up(self, val_losses: dict[str, float], run_start: float) -> dict[str, Any]:
        """The summary, with the last step's validation losses (measured now if the loop measured none)."""
        state = self.state
        self.progress.close()
        self.preemption.restore()
        final_val = val_losses or self._validate()
        elapsed = time.perf_counter() - run_start
        run_summary = summary(
            self.tasks,
            state.step,
            elapsed,
            state.tokens,
            state.initial_val_losses,
            final_val,
            self.balancer,
            self.trainable,
            self.guard.skipped,
        )
        stop, t = self.early_stopping, self.trainer
        if t.early_stopping_patience or t.keep_best:
            run_summary["early_stopping"] = {
                "metric": stop.metric,
                "best_value": stop.best_value,
                "best_step": stop.best_step,
                "stopped_early": stop.should_stop(),
                **({"best_checkpoint": f"checkpoint-{stop.best_step}"} if t.keep_best and stop.best_step else {}),
            }
        if self.rank == 0:
            (self.output_dir / "summary.json").write_text(json.dumps(run_summary, indent=2))
            print_summary(run_summary)
            print(f"outputs in {self.output_dir}")
        self.logger.finish()
        return run_summary

    def _preempted(self) -> dict[str, Any]:
        self.progress.close()
        if self.rank == 0:
            print(f"mtft: preempted; saved checkpoint-{self.state.step}. Resume with trainer.resume=auto", flush=True)
        self.preemption.restore()
        self.logger.finish()
        return {"preempted_at": self.state.step}

    def _stop(self, message: str) -> NoReturn:
        """The run cannot go on (training/guard.py): close up, and fail loudly."""
        self.progress.close()
        self.preemption.restore()
        self.logger.finish()
        raise TrainingDiverged(message)
