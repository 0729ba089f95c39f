"""The loop's own counters, and the one place where everything an exact resume needs is saved and restored.

torchtitan's idea: a checkpoint holds stateful objects (`state_dict()` / `load_state_dict()`), so the loop never
packs or unpacks one by hand. The layout on disk is the one checkpoints have always had, so an older checkpoint
resumes as before:

- the run's state, equal on every rank, in the engine's client state: `step`, `tokens`, `initial_val_losses`,
  `best_val_losses` and `task_samples` (TrainState's fields, at the top level), `balancer`, `guard`,
  `early_stopping` and `mix` (the mix the balancer's weights drive, training/weight_routes.py);
- each rank's own, in `rank_state_<rank>.pt` beside its RNG (training/checkpoint/files.py): `batches` (its data
  position, with the mixes of the rounds it has still to draw), `val_cycle` (its validation cycle's cursor) and
  `weights` (the balancer weights it trains with: every rank must agree, and a checkpoint makes that checkable;
  never loaded).

The adapter handle has no state of its own here: its run-time state lives in the model's buffers, which the
engine's checkpoint carries.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mtft.balancers import Balancer
from mtft.data.batches import MixedBatches, ValidationCycle
from mtft.logging.records import LossWindow
from mtft.training.best_val import BestValLosses
from mtft.training.early_stopping import EarlyStopping
from mtft.training.guard import NumericalGuard
from mtft.training.weight_routes import WeightRoutes


@dataclasses.dataclass
class TrainState:
    """What the loop itself counts and carries from step to step, explicit rather than locals or attributes that
    methods read. A checkpoint saves the first four; the rest lives within one run."""

    step: int = 0  # optimizer steps taken (skipped ones included)
    tokens: int = 0  # non-padding tokens trained on, all ranks
    initial_val_losses: dict[str, float] = dataclasses.field(default_factory=dict)  # before step 1: the baseline
    best_val: BestValLosses = dataclasses.field(default_factory=BestValLosses)  # each task's, full evaluations only
    task_samples: list[int] = dataclasses.field(default_factory=list)  # per task, samples trained, all ranks
    # within the run (not compared: a resumed state equals the saved one without them)
    window: LossWindow = dataclasses.field(default_factory=lambda: LossWindow(0), compare=False)  # next record's
    generation_scores: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict, compare=False)
    val_losses: dict[str, float] = dataclasses.field(default_factory=dict, compare=False)  # last step's ({}: none)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.tokens,
            "initial_val_losses": self.initial_val_losses,
            "best_val_losses": self.best_val.state_dict(),
            "task_samples": self.task_samples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A checkpoint from before `best_val_losses` (2026-12) resumes with none: the best of the evaluations
        after it."""
        self.step, self.tokens, self.initial_val_losses = state["step"], state["tokens"], state["initial_val_losses"]
        self.best_val.load_state_dict(state.get("best_val_losses", {}))
        self.task_samples = list(state.get("task_samples", self.task_samples))  # older: counted from the resume


@dataclasses.dataclass
class Resumable:
    """Every object whose state a resume restores. The engine (weights, optimizer, schedule) and the RNG are
    training/checkpoint/files.py's; the rest is here, so saving and loading it cannot drift apart."""

    state: TrainState
    guard: NumericalGuard
    balancer: Balancer
    batches: MixedBatches
    val_cycle: ValidationCycle
    early_stopping: EarlyStopping
    routes: WeightRoutes  # the mix the balancer's weights drive (apply_to=sampling)

    def run_state(self) -> dict[str, Any]:
        return {
            **self.state.state_dict(),
            "balancer": self.balancer.state_dict(),
            "guard": self.guard.state_dict(),
            "early_stopping": self.early_stopping.state_dict(),
            "mix": self.routes.state_dict(),
        }

    def rank_state(self) -> dict[str, Any]:
        batches = self.batches.state_dict()
        return {"batches": batches, "val_cycle": self.val_cycle.cursor, "weights": self.balancer.weights()}

    def load(self, run_state: dict[str, Any], rank_state: dict[str, Any], same_data: bool) -> None:
        """With the same data the run continues exactly. With other data (trainer.resume_allow_changes) the saved
        stream no longer exists: only the model's progress carries over (step, tokens, skipped-step counts), and the
        data stream, validation cycle, balancer and initial validation losses start afresh."""
        self.state.load_state_dict(run_state)
        self.guard.load_state_dict(run_state["guard"])
        if not same_data:
            self.state.initial_val_losses = {}  # measured again, on the new data
            self.state.task_samples = [0] * len(self.routes.names)  # counted afresh, over the new tasks
            self.state.best_val = BestValLosses()  # the old data's losses compare with nothing now
            return
        if "early_stopping" in run_state:  # checkpoints from before early stopping have none: nothing was observed
            self.early_stopping.load_state_dict(run_state["early_stopping"])
        self.balancer.load_state_dict(run_state["balancer"])
        if "mix" in run_state:  # checkpoints from before apply_to (2026-12) sampled by the static mix alone
            self.routes.load_state_dict(run_state["mix"])
        self.batches.load_state_dict(rank_state["batches"])
        self.val_cycle.cursor = rank_state["val_cycle"]
