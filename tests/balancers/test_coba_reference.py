"""CoBa against its reference: MFTCoder's own implementation, transcribed here as formulas and driven on a synthetic
validation-loss history next to mtft's `CoBaBalancer`.

Reference: github.com/codefuse-ai/MFTCoder at commit 8ba13f44e2036f1412a343bc343dc6cda7383d73 (v0.5, Nov 2024):
- `mftcoder_accelerate/src/utils/loss_utils.py`, class `CoBaStatus`: `compute_per_task_weight` (the weights),
  `fit_window_slope` (the slope), `sample_valid_batch` (the history of normalised validation losses);
- `mftcoder_accelerate/src/pefts/mft_trainer.py`, `MftTrainer.accelerate_train`: when those are called.

Its formulas, with c the optimizer steps completed, I `coba_update_interval`, H `coba_history_length`, N tasks and
ℓ the validation losses divided by their value before training:
- schedule: at c % I == 0 and c ≥ warm-up, weights for the next update are computed; after that update, if
  c % I == 0 and c ≥ 1, a round ℓ is measured and appended (the first round is after the second update);
- window: s = max(0, c // I − H), x = s, s + 1, …, c − 1; y = the last len(x) rounds, and x its first len(y);
- α_i: the least-squares slope of y_i on (x, 1); β: the same for max_i y_i;
  every α and β since warm-up is kept, in order;
- RCS = softmax(N·α / Σ_i|α_i|);
- ACS: A = the kept α from index s on (M rows), ACS = softmax over i of (−M·A_i / Σ_rows|A_i|) at the last row;
- DF = K·softmax(−τ·K·β / Σ|β|)_last over all K kept β (not clipped);
- w = softmax(N·(DF·RCS + (1 − DF)·ACS)); if some w_i < 1/(10N): w ← w·(1 − 1/10) + 1/(10N). Summing to 1.

mtft reports weights summing to N, and bounds its windows (`variant="bounded"`, the default): its ACS holds the last
`history` slopes where the reference's holds H − warm-up + 1 once c > H; its DF uses the last `history` total
slopes where the reference's uses all since warm-up; and it clips DF to [0, 1]. `variant="mftcoder"` does as the
reference. Two schedule differences are not options: mtft's loop also measures after the first update, and where
a sum of |slopes| is 0 mtft gives a uniform softmax where the reference divides by zero.
"""

from __future__ import annotations

import numpy as np
import pytest

from mtft.balancers.coba import CoBaBalancer, CoBaConfig
from mtft.errors import ConfigError

TASKS = ["converging", "slow", "diverging"]
INITIAL = {"converging": 2.0, "slow": 3.0, "diverging": 1.5}  # L_i(0), the full pass before training
STEPS, WARMUP, HISTORY, TAU = 40, 5, 15, 5.0


def loss_history(steps: int = STEPS) -> dict[int, dict[str, float]]:
    """Validation losses after each update: one task converging fast, one slowly and then faster (the worst task's
    slope steepening sends the reference's DF above 1), one that overfits after 15."""
    noise = np.random.default_rng(0).normal(0.0, 0.004, size=(steps + 1, len(TASKS)))
    history = {}
    for k in range(1, steps + 1):
        curve = {
            "converging": 0.4 + 0.6 * np.exp(-k / 8),
            "slow": 1 - 0.004 * k if k <= 18 else 0.928 - 0.012 * (k - 18),
            "diverging": 1 - 0.02 * k if k <= 15 else 0.7 + 0.008 * (k - 15),
        }
        history[k] = {t: INITIAL[t] * (curve[t] + noise[k, i]) for i, t in enumerate(TASKS)}
    return history


def reference_slope(x: np.ndarray, y: np.ndarray) -> float:
    """`fit_window_slope`: rounds with a zero loss dropped from y, then x cut to y's length; OLS on (x, 1)."""
    y = y[y != 0]
    x = x[: len(y)]
    if len(y) < 2:
        return 0.0
    design = np.stack([x, np.ones_like(x)], axis=1).astype(np.float64)
    return float(np.linalg.lstsq(design, y, rcond=None)[0][0])


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


class MFTCoderCoBa:
    """The reference's `CoBaStatus`, as the formulas in the module docstring."""

    def __init__(self, warmup: int, history: int, tau: float, interval: int = 1):
        self.warmup, self.history, self.tau, self.interval = warmup, history, tau, interval
        self.rounds: list[np.ndarray] = []  # normalised validation losses, one (N,) row per round
        self.task_slopes: list[np.ndarray] = []
        self.total_slopes: list[float] = []
        self.dfs: list[float] = []

    def weights(self, completed: int) -> np.ndarray:
        n = len(self.rounds[0])
        start = max(0, completed // self.interval - self.history)
        x = np.arange(start, completed, dtype=np.float64)
        y = np.array(self.rounds)[-len(x) :]
        alpha = np.array([reference_slope(x, y[:, i]) for i in range(n)])
        self.task_slopes.append(alpha)
        self.total_slopes.append(reference_slope(x, y.max(axis=1)))

        rcs = softmax(n * alpha / np.abs(alpha).sum())
        window = np.array(self.task_slopes)[start:]
        acs = softmax((-len(window) * window / np.abs(window).sum(axis=0))[-1])
        beta = np.array(self.total_slopes)
        df = len(beta) * softmax(-len(beta) * beta / np.abs(beta).sum() * self.tau)[-1]
        self.dfs.append(df)

        w = softmax(n * (df * rcs + (1 - df) * acs))
        floor = 1 / (10 * n)
        return w * (1 - floor * n) + floor if (w < floor).any() else w


def reference_run(losses: dict[int, dict[str, float]], reference: MFTCoderCoBa) -> dict[int, np.ndarray]:
    """The weights in effect at each update, summing to N, on the reference trainer's schedule."""
    weights, in_effect = np.ones(len(TASKS)) / len(TASKS), {}
    for completed in range(len(losses)):
        due = completed % reference.interval == 0
        if due and completed >= reference.warmup:
            weights = reference.weights(completed)
        in_effect[completed + 1] = len(TASKS) * weights
        if due and completed >= 1:  # measured after update completed + 1
            reference.rounds.append(np.array([losses[completed + 1][t] / INITIAL[t] for t in TASKS]))
    return in_effect


def mtft_run(losses: dict[int, dict[str, float]], balancer: CoBaBalancer, first_round: bool) -> dict[int, np.ndarray]:
    """As training/loop.py drives it: weights() before each step, observe() after it with the rounds it requests.
    Without `first_round`, step 1's round is withheld, so both see the same rounds."""
    balancer.start(INITIAL)
    in_effect = {}
    for step in range(1, len(losses) + 1):
        in_effect[step] = np.array([balancer.weights()[t] for t in TASKS])
        measured = balancer.val_request(step) > 0 and (first_round or step > 1)
        balancer.observe(step, {}, losses[step] if measured else None)
    return in_effect


def coba(variant: str) -> CoBaBalancer:
    cfg = CoBaConfig(warmup_steps=WARMUP, history=HISTORY, tau=TAU, update_interval=1, variant=variant)
    return CoBaBalancer(cfg, TASKS)


def max_difference(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


@pytest.fixture(scope="module")
def reference() -> tuple[dict[int, np.ndarray], MFTCoderCoBa]:
    ref = MFTCoderCoBa(WARMUP, HISTORY, TAU)
    return reference_run(loss_history(), ref), ref


def test_the_history_exercises_every_difference(reference):
    """Past c = H the ACS windows part; past c = H + warm-up − 1 the DF windows; DF above 1 needs no clip."""
    weights, ref = reference
    assert STEPS > HISTORY + WARMUP
    assert max(ref.dfs) > 1.0
    assert not np.allclose(weights[WARMUP + 1], 1.0)  # weights move after warm-up
    assert max(float(np.abs(w - 1).max()) for w in weights.values()) > 0.3


def test_the_mftcoder_variant_reproduces_the_reference(reference):
    weights, _ = reference
    ours = mtft_run(loss_history(), coba("mftcoder"), first_round=False)
    assert max_difference(ours, weights) < 1e-6
    for step in range(1, WARMUP + 1):
        np.testing.assert_array_equal(ours[step], 1.0)


def test_the_bounded_default_differs_where_its_windows_and_clip_do(reference):
    """Measured on this history: the two agree while c ≤ H (no window is full, and DF ≤ 1 until then); after it
    they differ by up to 1.36 on weights summing to 3, at steps 21-32 where the reference's DF reaches 12.5
    (w = softmax(N·(12.5·RCS − 11.5·ACS))) and mtft's is clipped to 1."""
    weights, ref = reference
    ours = mtft_run(loss_history(), coba("bounded"), first_round=False)
    agreeing = range(1, HISTORY + 2)
    assert max_difference({k: ours[k] for k in agreeing}, {k: weights[k] for k in agreeing}) < 1e-6
    assert max_difference(ours, weights) == pytest.approx(1.358, abs=5e-3)
    assert max(ref.dfs) == pytest.approx(12.46, abs=0.01)


def test_the_first_round_mtft_measures_moves_the_weights_after_a_short_warmup(reference):
    """mtft's loop measures after the first update too; the reference's first round is after the second. With a
    warm-up of 5, that extra point is one of 5 in the first fit: up to 0.33 on weights summing to 3 (steps 6-23),
    and less as the windows grow. Not an option: it is where the reference's trainer starts measuring."""
    weights, _ = reference
    ours = mtft_run(loss_history(), coba("mftcoder"), first_round=True)
    assert max_difference(ours, weights) == pytest.approx(0.331, abs=5e-3)
    later = range(HISTORY + 10, STEPS + 1)
    assert max_difference({k: ours[k] for k in later}, {k: weights[k] for k in later}) < 0.05


def test_the_mftcoder_variant_resumes_exactly():
    losses = loss_history()
    whole = coba("mftcoder")
    mtft_run(losses, whole, first_round=True)
    half = coba("mftcoder")
    mtft_run({k: losses[k] for k in range(1, 26)}, half, first_round=True)
    resumed = coba("mftcoder")
    resumed.load_state_dict(half.state_dict())
    for step in range(26, STEPS + 1):
        resumed.observe(step, {}, losses[step])
    assert resumed.weights() == whole.weights()
    assert len(resumed.total_slopes) == STEPS - WARMUP + 1 > HISTORY  # the reference keeps every total slope


def test_an_unknown_variant_is_a_config_error():
    with pytest.raises(ConfigError, match="variant"):
        CoBaConfig(variant="reference")
