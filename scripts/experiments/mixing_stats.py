"""The paired bootstrap of scripts/experiments/mixing.py (its docstring states the design): each arm's held-out
items as arrays, resamples of seeds and items as multiplicities, the three metrics of every resample at once, and
each comparison's difference, percentile interval and verdict."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STATIC = ("natural", "uniform", "temperature")  # the candidates for the best static mixing, in tie-break order


@dataclass(frozen=True)
class ArmItems:
    """One arm's held-out items, by task: arrays of (seeds, items), the items in the same order in every arm."""

    scores: dict[str, np.ndarray]  # the task's headline metric per item
    loss_sums: dict[str, np.ndarray]  # token-loss sum per item
    tokens: dict[str, np.ndarray]  # tokens per item


def arm_items(reports: list[dict], which: dict[str, str], prompts: dict[str, list[str]]) -> ArmItems:
    """The arrays of one arm's seeds (`reports`, each with its mtft-eval `items`). Pairing needs every run to have
    scored the same held-out items in the same order: `prompts`, the reference run's, and a loss for each."""
    for report in reports:
        for task, items in report["items"].items():
            seen = [row["prompt"] for row in items["rows"]]
            indices = [row["index"] for row in items["losses"]]
            if seen != prompts[task] or indices != list(range(len(seen))):
                raise SystemExit(f"{task}: a run scored other held-out items than the first; pairing needs the same")
    runs = [report["items"] for report in reports]
    return ArmItems(
        scores={t: np.array([[row[which[t]] for row in run[t]["rows"]] for run in runs], float) for t in which},
        loss_sums={t: np.array([[row["loss_sum"] for row in run[t]["losses"]] for run in runs]) for t in which},
        tokens={t: np.array([[row["tokens"] for row in run[t]["losses"]] for run in runs], float) for t in which},
    )


@dataclass(frozen=True)
class Draws:
    """Bootstrap resamples as multiplicities: of each seed (resamples, seeds) and of each task's items
    (resamples, items). All ones, once: the observed data."""

    seeds: np.ndarray
    items: dict[str, np.ndarray]


def bootstrap_draws(seeds: int, items: dict[str, int], resamples: int, seed: int) -> Draws:
    rng = np.random.default_rng(seed)
    seed_counts = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=resamples).astype(float)
    item_counts = {
        task: rng.multinomial(n, np.full(n, 1 / n), size=resamples).astype(float) for task, n in items.items()
    }
    return Draws(seed_counts, item_counts)


def observed(seeds: int, items: dict[str, int]) -> Draws:
    return Draws(np.ones((1, seeds)), {task: np.ones((1, n)) for task, n in items.items()})


def metrics(arm: ArmItems, draws: Draws) -> dict[str, np.ndarray]:
    """(a) primary, (b) worst task and (c) mean final validation loss of each resample (resamples,). A task's
    score is its items' mean over the drawn seeds and items; its loss, per drawn seed, Σ loss sums / Σ tokens of
    the drawn items, averaged over the drawn seeds."""
    seeds = draws.seeds.shape[1]
    task_scores, task_losses = [], []
    for task, scores in arm.scores.items():
        items = draws.items[task]
        task_scores.append(np.einsum("bs,sn,bn->b", draws.seeds, scores, items) / (seeds * scores.shape[1]))
        per_seed = (items @ arm.loss_sums[task].T) / (items @ arm.tokens[task].T)  # (resamples, seeds)
        task_losses.append((draws.seeds * per_seed).sum(1) / seeds)
    scores_TB = np.stack(task_scores)
    return {"primary": scores_TB.mean(0), "worst": scores_TB.min(0), "val_loss": np.stack(task_losses).mean(0)}


HIGHER_IS_BETTER = {"primary": True, "worst": True, "val_loss": False}


@dataclass(frozen=True)
class Difference:
    observed: float
    low: float
    high: float
    verdict: str


def compare(arm: ArmItems, reference: ArmItems, draws: Draws, point: Draws) -> dict[str, Difference]:
    """Each metric's paired difference arm − reference, its percentile interval and verdict."""
    resampled, reference_resampled = metrics(arm, draws), metrics(reference, draws)
    observed_arm, observed_reference = metrics(arm, point), metrics(reference, point)
    differences = {}
    for name, higher_is_better in HIGHER_IS_BETTER.items():
        delta = resampled[name] - reference_resampled[name]
        low, high = np.percentile(delta, [2.5, 97.5])
        verdict = "within noise"
        if low > 0 or high < 0:
            verdict = "better" if (low > 0) == higher_is_better else "worse"
        value = float(observed_arm[name][0] - observed_reference[name][0])
        differences[name] = Difference(value, float(low), float(high), verdict)
    return differences


def best_static(items: dict[str, ArmItems], point: Draws) -> str:
    """The rule fixed beforehand: of the static mixings, the highest primary metric averaged over seeds."""
    primary = {name: float(metrics(items[name], point)["primary"][0]) for name in STATIC}
    return max(STATIC, key=primary.get)
