"""CoBa: Convergence Balancer for multi-task fine-tuning (Gong et al., EMNLP 2024, arXiv 2410.06741).

Hyperparameters: `warmup_steps` 100, `history` 200, `tau` 5 (the reference's), `update_interval` 10 (optimizer steps
between validation rounds; reference 1), `val_batches` 1 (micro-batches per round), `val_batch_size` 8 samples.
Cost: a round is one no-grad forward of `val_batch_size` samples. With the reference's interval of 1 and a
micro-batch as large as training's, that is about a third of a training step every step. Our defaults keep
CoBa within a few percent of a fixed weighting (`mtft-bench balancer`). The slope window then spans
history × interval = 2000 steps of smaller, noisier rounds, which the OLS fit over 200 points averages out.

Every `update_interval` steps the trainer measures per-task validation losses L_i on `val_batches` micro-batches
(all-reduced over ranks) and calls `observe`. With ℓ_i = L_i / L_i(0) (L_i(0) from a full pass before training):
- α_i: the OLS slope of ℓ_i over its last `history` (step, ℓ_i) points. A task absent from a round simply has no
  point for that step, so its x and y never misalign (the reference drops zeros from y but not from x).
- RCS = softmax(N·α / Σ_j|α_j|) (eq. 4): a task converging more slowly (α nearer 0 or > 0) gets more weight.
- ACS_i = softmax_i(−M·α_i(t) / Σ_s|α_i(s)|) over the task's last M slopes (eq. 5): a task whose slope turns
  toward zero or upward, relative to its own history, gets less.
- DF = M·softmax(−M·τ·β / Σ|β|)_last over the slopes β of max_i ℓ_i (eq. 6), clipped to [0, 1] (the reference
  does not clip, so the weight on ACS can turn negative).
- w = softmax(N·(DF·RCS + (1 − DF)·ACS)) (eq. 7), floored as in the reference when a weight falls under 1/(10N).
Weights are uniform during warm-up, and are reported scaled to sum to N (uniform = 1 each).

`variant` (reference: MFTCoder `mftcoder_accelerate/src/utils/loss_utils.py` `CoBaStatus`, commit 8ba13f4; the
test tests/balancers/test_coba_reference.py transcribes it and checks both variants against it):
- `bounded` (default): the ACS and the DF each use the last `history` slopes, so memory stays bounded, and DF
  is clipped to [0, 1].
- `mftcoder`: as the reference. The ACS uses the slopes from index step // update_interval − history of those
  kept since warm-up (H − warm-up + 1 of them once the step passes H), the DF every total slope since warm-up
  (memory grows by N + 1 floats a round), unclipped. Its weights equal the reference's to 1e-13 on the test's
  history. There the default differs by up to 1.36 (weights summing to 3), nearly all from the clip while the
  reference's DF reaches 12.5; the ACS window alone moves them by up to 0.22.
Not options: the reference's first round is after the second update (mtft's loop measures after the first
too), it divides by zero where every slope is 0 (mtft: a uniform softmax), and with `update_interval` > 1 its
slope window, t − t // I + H long but counted in rounds, takes in every round so far (mtft: the last H).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtft.balancers.base import Balancer, BalancerConfig, BalancerMethod, register_balancer
from mtft.errors import check, check_choice

VARIANTS = ("bounded", "mftcoder")


@dataclass
class CoBaConfig(BalancerConfig):
    name: str = "coba"
    warmup_steps: int = 100
    history: int = 200
    tau: float = 5.0
    update_interval: int = 10  # reference: 1 (see the module docstring for the cost trade-off)
    val_batches: int = 1
    val_batch_size: int = 8  # samples per validation micro-batch; 0 uses trainer.eval_batch_size
    variant: str = "bounded"  # "mftcoder": the reference's ACS and DF windows and an unclipped DF (docstring)

    def __post_init__(self) -> None:
        check(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        check(self.history >= 2, "history", f"must be >= 2 (a slope needs two points), got {self.history}")
        check(self.tau > 0, "tau", f"must be > 0, got {self.tau}")
        check(self.update_interval > 0, "update_interval", f"must be > 0, got {self.update_interval}")
        check(self.val_batches > 0, "val_batches", f"must be > 0, got {self.val_batches}")
        check(self.val_batch_size >= 0, "val_batch_size", f"must be >= 0, got {self.val_batch_size}")
        check_choice(self.variant, "variant", VARIANTS)


def ols_slope(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    x, y = np.array(points, dtype=np.float64).T
    spread = ((x - x.mean()) ** 2).sum()
    return float(((x - x.mean()) * (y - y.mean())).sum() / spread) if spread > 0 else 0.0


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _scaled(values: np.ndarray, factor: float) -> np.ndarray:
    """factor · v / Σ|v|, and zeros when every v is 0 (then the softmax is uniform)."""
    total = np.abs(values).sum()
    return factor * values / total if total > 0 else np.zeros_like(values)


def relative_convergence(slopes: np.ndarray) -> np.ndarray:
    return softmax(_scaled(slopes, len(slopes)))


def absolute_convergence(slope_histories: list[list[float]]) -> np.ndarray:
    current = [(-_scaled(np.array(h), len(h)))[-1] if h else 0.0 for h in slope_histories]
    return softmax(np.array(current))


def divergence_factor(total_slopes: list[float], tau: float, clip: bool = True) -> float:
    slopes = np.array(total_slopes, dtype=np.float64)
    factor = len(slopes) * softmax(-_scaled(slopes, len(slopes)) * tau)[-1]
    return float(np.clip(factor, 0.0, 1.0)) if clip else float(factor)


def coba_weights(rcs: np.ndarray, acs: np.ndarray, df: float) -> np.ndarray:
    n = len(rcs)
    weights = softmax(n * (df * rcs + (1 - df) * acs))
    floor = 1 / (10 * n)
    if (weights < floor).any():
        weights = weights * (1 - floor * n) + floor
    return weights


class CoBaBalancer(Balancer):
    cfg: CoBaConfig

    def __init__(self, cfg: CoBaConfig, task_names: list[str]):
        super().__init__(cfg, task_names)
        self.bounded = cfg.variant == "bounded"
        self.slope_memory = cfg.history if self.bounded else None  # the reference keeps every slope
        self.initial: dict[str, float] = {}
        self.points = {t: deque(maxlen=cfg.history) for t in task_names}  # (step, normalised val loss)
        self.slopes = {t: deque(maxlen=self.slope_memory) for t in task_names}  # α_i at each update after warm-up
        self.total_points: deque = deque(maxlen=cfg.history)  # (step, max_i ℓ_i)
        self.total_slopes: deque = deque(maxlen=self.slope_memory)
        self._weights = np.ones(len(task_names))
        self._metrics: dict[str, float] = {}

    def weights(self) -> dict[str, float]:
        return {t: float(w) for t, w in zip(self.task_names, self._weights, strict=True)}

    def start(self, initial_val_losses: dict[str, float]) -> None:
        self.initial = dict(initial_val_losses)  # L_i(0), which every later loss is normalised by

    def val_request(self, step: int) -> int:
        return self.cfg.val_batches if step % self.cfg.update_interval == 0 else 0

    def val_batch_size(self, default: int) -> int:
        return self.cfg.val_batch_size or default

    def observe(self, step: int, train_losses: dict[str, float], val_losses: dict[str, float] | None) -> None:
        if not val_losses:
            return
        normalised = {t: loss / self.initial[t] for t, loss in val_losses.items() if self.initial.get(t)}
        for task, value in normalised.items():
            self.points[task].append((step, value))
        if normalised:
            self.total_points.append((step, max(normalised.values())))
        if step < self.cfg.warmup_steps:
            return
        alpha = np.array([ols_slope(list(self.points[t])) for t in self.task_names])
        for task, slope in zip(self.task_names, alpha, strict=True):
            if task in normalised:
                self.slopes[task].append(float(slope))
        self.total_slopes.append(ols_slope(list(self.total_points)))
        rcs = relative_convergence(alpha)
        acs = absolute_convergence(self._acs_windows(step))
        df = divergence_factor(list(self.total_slopes), self.cfg.tau, clip=self.bounded)
        self._weights = len(self.task_names) * coba_weights(rcs, acs, df)
        self._metrics = {"df": df}
        for task, r, a in zip(self.task_names, rcs, acs, strict=True):
            self._metrics.update({f"rcs/{task}": float(r), f"acs/{task}": float(a)})

    def _acs_windows(self, step: int) -> list[list[float]]:
        """Each task's slopes that enter its ACS: the last `history` (bounded), or, as MFTCoder slices its slope
        list, those from index step // update_interval − history on: H − warm-up + 1 once that index passes 0."""
        first = 0 if self.bounded else max(0, step // self.cfg.update_interval - self.cfg.history)
        return [list(self.slopes[t])[first:] for t in self.task_names]

    def metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    def state_dict(self) -> dict[str, Any]:
        return {
            "initial": dict(self.initial),
            "points": {t: list(p) for t, p in self.points.items()},
            "slopes": {t: list(s) for t, s in self.slopes.items()},
            "total_points": list(self.total_points),
            "total_slopes": list(self.total_slopes),
            "weights": self._weights.tolist(),
            "metrics": dict(self._metrics),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        history = self.cfg.history
        self.initial = dict(state["initial"])
        self.points = {t: deque(map(tuple, state["points"][t]), maxlen=history) for t in self.task_names}
        self.slopes = {t: deque(state["slopes"][t], maxlen=self.slope_memory) for t in self.task_names}
        self.total_points = deque(map(tuple, state["total_points"]), maxlen=history)
        self.total_slopes = deque(state["total_slopes"], maxlen=self.slope_memory)
        self._weights = np.array(state["weights"])
        self._metrics = dict(state["metrics"])


register_balancer("coba", BalancerMethod(CoBaConfig, CoBaBalancer))
