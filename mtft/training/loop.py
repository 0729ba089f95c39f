"""The training recipe, top to bottom: `setup`, then one plain loop of optimizer steps on the DeepSpeed engine
(`train`), then `cleanup`, which runs whatever happened (torchtune's recipes are the model).

Each optimizer step: draw its micro-batches, count each task's completion tokens over the whole step (all
ranks), then forward/backward each micro-batch with the balanced loss (training/losses.py), then let the
balancer observe the step's per-task losses. Validation, logging and checkpoints happen when the components that
own them say they are due.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from functools import partial
from typing import Any, NoReturn

import torch
import yaml
from transformers import set_seed

from mtft.balancers import build_balancer
from mtft.config.train import TrainConfig
from mtft.logging import build_run_logger
from mtft.logging.console import terminal_bars
from mtft.logging.progress import Progress
from mtft.logging.records import LossWindow, StepNumbers, metrics_record, task_means
from mtft.logging.secrets import redact
from mtft.logging.throughput import ThroughputWindow, peak_flops
from mtft.training import guard, summary
from mtft.training import step as steps
from mtft.training.checkpoint.checkpointer import Checkpointer
from mtft.training.checkpoint.resumable import Resumable, TrainState
from mtft.training.components import data_streams, load_model_and_tasks
from mtft.training.early_stopping import EarlyStopping
from mtft.training.engine import build_engine, init_distributed, release_torch, resolve_precision
from mtft.training.losses import balanced_loss
from mtft.training.periodic_eval import Evaluator
from mtft.training.preemption import Preemption
from mtft.training.weight_routes import WeightRoutes


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train as `cfg` says. Returns the run's summary (summary.json), or `{"preempted_at": step}` when a
    preemption signal ended it early (after a checkpoint). Whatever happens, the recipe is cleaned up."""
    recipe = TrainingRecipe(cfg)
    succeeded = False
    try:
        recipe.setup()
        result = recipe.train()
        succeeded = True
        return result
    finally:
        recipe.cleanup(succeeded)


class TrainingRecipe:
    """One run: `setup()` builds every component, `train()` runs the loop, `cleanup()` closes what setup opened
    (the progress bars, the preemption handlers, the logger's run), on success, preemption, divergence or any
    exception. Building the recipe does nothing else.

    The components are built once and never rebound, so every method may use them; what changes as the run goes
    is in `self.state` (TrainState) and in the components' own state, which `self.resumable` saves and restores.
    """

    def __init__(self, cfg: TrainConfig):
        self.cfg, self.trainer = cfg, cfg.trainer
        self.progress: Progress | None = None  # what cleanup closes, once setup has opened it
        self.preemption: Preemption | None = None
        self.logger = None

    # ---- setup ------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Every component, in the order each needs the last: the process group, the output directory and the
        checkpoint to resume from (checked before any model loads), the model and tasks, the engine and what
        drives it, the logger, the resumed state, the run's files, then the first validation."""
        cfg, t = self.cfg, self.trainer
        self.rank, self.world_size = init_distributed(t.collective_timeout)
        if cfg.deepspeed.precision == "auto":  # made concrete here, so config.yaml records what ran
            cfg.deepspeed.precision = resolve_precision("auto")
            if self.rank == 0:
                print(f"mtft: precision {cfg.deepspeed.precision} (deepspeed.precision=auto)", flush=True)
        self.checkpointer = Checkpointer(t, cfg.data)
        self.output_dir = self.checkpointer.output_dir
        set_seed(t.seed)  # every random draw below (model init, adapter init) follows from it, in order
        terminal_bars(cfg.logger.progress, self.rank)  # the libraries' bars only where a person watches a terminal
        self._setup_components()
        self._setup_state()
        self._write_run_files()
        self.progress = Progress(cfg.logger.progress, self.rank, t.max_steps, self.state.step)
        self.preemption = Preemption()  # from here on a SIGTERM or SIGUSR1 ends the run after a step, saved
        if not self.state.initial_val_losses:
            self.state.initial_val_losses = self.evaluator.losses(self.progress)
            self.state.best_val.observe(self.state.step, self.state.initial_val_losses)
            self.balancer.start(self.state.initial_val_losses)

    def _setup_components(self) -> None:
        """The model and tasks, the engine, the balancer, the guard, the data streams, the evaluator, the logger."""
        cfg, t = self.cfg, self.trainer
        built = load_model_and_tasks(cfg, self.world_size)
        self.tokenizer, self.model, self.adapter, self.tasks = built.tokenizer, built.model, built.adapter, built.tasks
        self.token_losses, self.names = built.token_losses, [task.name for task in built.tasks]
        self.trainable, self.total = built.trainable, built.total
        self.engine = build_engine(self.model, cfg, self.world_size)
        self.adapter.prepare(self.engine.module, self.tasks, self.tokenizer.pad_token_id, t.seed)
        self.balancer = build_balancer(cfg.balancer, self.names)
        self.guard = guard.NumericalGuard(t.max_bad_steps)
        val_batch = self.balancer.val_batch_size(t.eval_batch_size)
        self.data = data_streams(self.tasks, cfg, self.tokenizer.pad_token_id, val_batch, self.rank, self.world_size)
        self.routes = WeightRoutes(self.balancer, cfg.balancer, self.data.batches, self.data.probabilities, self.names)
        self.evaluator = Evaluator(self.engine, built, cfg, self.rank, self.world_size)
        self.run_config = redact(dataclasses.asdict(cfg))  # no API key or token from the environment in any record
        self.logger = build_run_logger(cfg.logger, self.output_dir, self.run_config, self.rank)
        peak = peak_flops(cfg.logger.peak_tflops, cfg.deepspeed.precision)
        self.throughput = ThroughputWindow(self.engine.module, self.world_size, peak)

    def _setup_state(self) -> None:
        """The run's state and every stateful component, restored from the checkpoint to resume from if any."""
        t = self.trainer
        self.state = TrainState(window=LossWindow(len(self.names)), task_samples=[0] * len(self.names))
        self.early_stopping = EarlyStopping(
            t.early_stopping_metric, t.early_stopping_patience, t.early_stopping_min_delta
        )
        self.resumable = Resumable(
            self.state,
            self.guard,
            self.balancer,
            self.data.batches,
            self.data.val_cycle,
            self.early_stopping,
            self.routes,
        )
        if self.checkpointer.resume_from is not None:
            sizes = [len(task.train) for task in self.tasks]
            self.checkpointer.resume(self.engine, self.resumable, self.names, sizes)
            if self.rank == 0:
                print(f"mtft: resumed from {self.checkpointer.resume_from} at step {self.state.step}", flush=True)
        self.logger.drop_after(self.state.step)  # records a crashed run wrote past its last checkpoint

    def _write_run_files(self) -> None:
        """config.yaml and data_report.json (rank 0), and the data report as the logger's first table."""
        report = summary.data_report(self.tasks, self.data.probabilities)
        if self.rank == 0:
            (self.output_dir / "config.yaml").write_text(yaml.safe_dump(self.run_config, sort_keys=False))
            (self.output_dir / "data_report.json").write_text(json.dumps(report, indent=2))
            summary.print_data_report(report)
            print(
                f"mtft: {len(self.names)} tasks, {self.trainable:,} of {self.total:,} parameters trainable, "
                f"{self.world_size} rank(s)"
            )
        self.logger.table("data_report", *summary.data_report_table(report), self.state.step)

    # ---- loop -------------------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Optimizer steps up to trainer.max_steps, with a checkpoint when the checkpointer says one is due, at the
        best step (trainer.keep_best), on early stopping and on preemption (which ends the run early)."""
        t, state = self.trainer, self.state
        run_start = time.perf_counter()
        self.engine.train()
        self.throughput.reset()
        while state.step < t.max_steps:
            self._train_step()
            preempted, stopping = self.preemption.requested(), self.early_stopping.should_stop()
            best_now = t.keep_best and self.early_stopping.best_step == state.step
            if self.checkpointer.due(state.step) or preempted or stopping or best_now:
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
        return self._wrap_up(run_start)

    def _train_step(self) -> None:
        """One optimizer step, then what follows it when due: validation and sample generations, the balancer's
        observation, a metrics record. The validation losses measured go to `state.val_losses` ({} if none)."""
        t, state, names = self.trainer, self.state, self.names
        mix = self.routes.mix_in_effect()  # what this step's rounds are drawn with
        # on the host, counted there: the step moves them
        drawn = [self.data.batches.next() for _ in range(t.grad_accum_steps)]
        micro_batches = steps.step_batches(drawn, len(names), self.data.batches.rounds)
        task_weights = self.routes.loss_weights()  # by task name; the step takes them as a tensor in task order
        weights = torch.tensor([task_weights[n] for n in names], device=self.engine.device)
        result = steps.optimizer_step(
            self.engine, micro_batches, weights, self.adapter, self.routes.reduction, self.token_losses
        )
        state.step += 1
        state.tokens += result.tokens
        state.task_samples = [a + b for a, b in zip(state.task_samples, result.task_samples, strict=True)]
        self.throughput.add(result.tokens, result.samples, result.attended)
        if result.applied:
            self.guard.step_applied()
            train_losses = task_means(names, result.sums, result.counts)
            state.window.add(result.sums, result.counts)
            self.progress.step(result.loss, train_losses)
        else:
            self._step_skipped(result, micro_batches, task_weights, mix)

        evaluate = self.evaluator.due(state.step)
        with self.throughput.paused():
            state.val_losses = self.evaluator.losses(self.progress) if evaluate else {}
            if evaluate:
                state.generation_scores = self.evaluator.generations(self.logger, state.step)
                self.early_stopping.observe(state.step, state.val_losses, state.generation_scores)
                state.best_val.observe(state.step, state.val_losses)
        if result.applied:  # a skipped step leaves the balancer, and the mix, as they were
            self._observe(train_losses, micro_batches, mix, result)
        if state.step % t.logging_steps == 0 or evaluate:
            self._log(task_weights, result.grad_norm, mix)

    def _step_skipped(
        self,
        result: steps.StepResult,
        micro_batches: steps.StepBatches,
        task_weights: dict[str, float],
        mix: dict[str, float],
    ) -> None:
        """Nothing was learnt from this step: it is counted and shown, and the run stops after too many in a row."""
        step, names = self.state.step, self.names
        stop = self.guard.step_skipped(step)
        in_batch = [n for i, n in enumerate(names) if result.counts[i] > 0]
        cause = guard.skip_cause(guard.nonfinite_losses(result.sums, names), result.grad_norm)
        self.progress.skipped(step, cause, in_batch, self.guard.in_a_row, self.guard.skipped)
        if stop:
            cause = steps.first_nonfinite(self.engine, result, micro_batches, names, self.adapter)
            self.state.val_losses = {}
            self._log(task_weights, result.grad_norm, mix)  # the skipped steps, in metrics.jsonl too
            self._stop(self.guard.stop_message(step, cause, self.checkpointer.newest()))

    def _observe(
        self,
        train_losses: dict[str, float],
        micro_batches: steps.StepBatches,
        mix: dict[str, float],
        result: steps.StepResult,
    ) -> None:
        """Feed the balancer this step's mix and losses, plus the validation losses it asks for when none were
        measured; then the mix follows its weights where `balancer.apply_to` says so."""
        step, balancer = self.state.step, self.balancer
        balancer.sampled(mix, result.samples)
        with self.throughput.paused():
            balancer_val = self.state.val_losses
            if not balancer_val and (wanted := balancer.val_request(step)):
                cycle = (self.data.val_cycle.next() for _ in range(wanted))  # a few mixed micro-batches
                balancer_val = self.evaluator.losses_of(cycle)
        balancer.observe(step, train_losses, balancer_val or None)
        balancer.after_step(partial(self.evaluator.losses_of, micro_batches.micro_batches))  # FAMO
        self.routes.follow_weights(result.rounds)

    def _log(self, weights: dict[str, float], grad_norm: float | None, mix: dict[str, float]) -> None:
        """One metrics record over the window since the last, then a fresh window."""
        state, window = self.state, self.state.window
        numbers = StepNumbers(
            state.step,
            loss=self._window_loss(weights),
            lr=self.engine.lr(),
            task_losses=task_means(self.names, window.sums, window.counts),
            weights=weights,
            mix=mix,
            samples=dict(zip(self.names, state.task_samples, strict=True)),
            val_losses=state.val_losses,
            generation=state.generation_scores,
            throughput=self.throughput.fields(),
            grad_norm=grad_norm,
            skipped_steps=self.guard.skipped,
            balancer=self.balancer.metrics(),
            adapter=self.adapter.metrics(),
        )
        record = metrics_record(self.names, numbers)
        state.generation_scores = {}
        self.logger.log(record)
        self.progress.logged(record)
        window.clear()

    def _window_loss(self, weights: dict[str, float]) -> float:
        """The balanced loss of the window's tokens, as a step's is of its own: NaN if every step in it was skipped."""
        sums, counts = self.state.window.sums, self.state.window.counts
        task_weights = self.routes.reduction(torch.tensor([weights[n] for n in self.names]), counts)
        return float(balanced_loss(sums, counts, task_weights)) if counts.sum() > 0 else math.nan

    def _checkpoint(self) -> None:
        """A checkpoint, unless the weights hold non-finite values: then the run stops, the last good one intact."""
        step = self.state.step
        with self.throughput.paused():
            if bad := guard.nonfinite_parameters(self.engine.module):  # collective; a pass over the weights, at saves
                self._stop(guard.nonfinite_weights_message(step, bad, self.checkpointer.newest()))
            best = self.early_stopping.best_step if self.trainer.keep_best else None
            self.checkpointer.save(self.engine, step, self.resumable, self.cfg.adapter, self.tokenizer, best)

    # ---- wrap up ----------------------------------------------------------------------------------------------
    def _wrap_up(self, run_start: float) -> dict[str, Any]:
        """The summary, with the last step's validation losses (measured now if the loop measured none)."""
        state, t, stop = self.state, self.trainer, self.early_stopping
        self.progress.close()
        final_val = state.val_losses or self.evaluator.losses(self.progress)
        state.best_val.observe(state.step, final_val)  # seen already if the loop measured it: no change then
        elapsed = time.perf_counter() - run_start
        totals = summary.RunTotals(state.step, elapsed, state.tokens, self.trainable, self.guard.skipped)
        initial_val, best_val = state.initial_val_losses, state.best_val
        run_summary = summary.summary(self.tasks, totals, initial_val, final_val, self.balancer, best_val)
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
            summary.print_summary(run_summary)
            print(f"outputs in {self.output_dir}")
        return run_summary

    def _preempted(self) -> dict[str, Any]:
        self.progress.close()
        if self.rank == 0:
            print(f"mtft: preempted; saved checkpoint-{self.state.step}. Resume with trainer.resume=auto", flush=True)
        return {"preempted_at": self.state.step}

    def _stop(self, message: str) -> NoReturn:
        """The run cannot go on (training/guard.py): fail loudly; cleanup closes up."""
        raise guard.TrainingDiverged(message)

    # ---- cleanup ----------------------------------------------------------------------------------------------
    def cleanup(self, succeeded: bool = True) -> None:
        """Close what setup opened, whatever ended the run: the bars, the preemption handlers (the ones before the
        run come back), the logger's run (marked failed unless `succeeded`), and what DeepSpeed patched in torch.
        Safe after a partial setup, and once more after that."""
        if self.progress is not None:
            self.progress.close()
        if self.preemption is not None:
            self.preemption.restore()
        if self.logger is not None:
            self.logger.finish(exit_code=0 if succeeded else 1)
        release_torch()
