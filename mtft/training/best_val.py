"""Each task's best validation loss so far and the step of it, so per-task overfitting is visible: a task whose
final loss is above its best (summary.json's `best_step`, `best_val_loss` and `rise`) stopped gaining before the
run ended, however the mean moved.

Only full evaluations are observed (every task's whole validation split: the one before step 1, every
`trainer.eval_steps`, the last), never a balancer's few mixed validation micro-batches, whose noise would make a
"best" of luck. Its state is in every checkpoint, so a resumed run finds the best the unbroken one would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Best:
    step: int
    val_loss: float


@dataclass
class BestValLosses:
    best: dict[str, Best] = field(default_factory=dict)  # by task; a task with no finite evaluation is absent

    def observe(self, step: int, val_losses: dict[str, float]) -> None:
        """One full evaluation. A non-finite loss is never the best; a tie keeps the earlier step."""
        for name, loss in val_losses.items():
            held = self.best.get(name)
            if math.isfinite(loss) and (held is None or loss < held.val_loss):
                self.best[name] = Best(step, loss)

    def fields(self, name: str, final_val_loss: float | None) -> dict[str, Any]:
        """summary.json's keys for one task. `rise` = final / best - 1 (0.22: the final loss is 22% above the
        task's best; 0: the final evaluation is the best). None where the task had no finite evaluation (no
        validation samples), and `rise` None where the final loss is missing or not finite."""
        held = self.best.get(name)
        if held is None:
            return {"best_step": None, "best_val_loss": None, "rise": None}
        final = final_val_loss
        rise = final / held.val_loss - 1 if final is not None and math.isfinite(final) and held.val_loss > 0 else None
        return {"best_step": held.step, "best_val_loss": held.val_loss, "rise": rise}

    def state_dict(self) -> dict[str, Any]:
        return {name: {"step": b.step, "val_loss": b.val_loss} for name, b in self.best.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = {name: Best(b["step"], b["val_loss"]) for name, b in state.items()}
