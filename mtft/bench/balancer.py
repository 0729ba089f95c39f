"""`mtft-bench balancer`: training step time of each adaptive balancer against each fixed one, on the demo.

Each balancer trains the embedded default for `STEPS` optimizer steps in this process (one evaluation, at the
end); the time is the training loop's own, validation rounds included. CoBa runs at its configured defaults,
so the ratio is what a user gets without tuning.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from mtft.config.train import TrainConfig
from mtft.data.config import DataConfig, TaskSpec
from mtft.data.synthetic import DEMO_DATA_DIR, TASKS
from mtft.training.loop import train

STEPS = 300
ROUNDS = 3  # each balancer twice, alternating, keeping the faster run: less noise from a busy machine


def _seconds(balancer: str, out: Path, steps: int, quick: bool) -> float:
    from mtft.balancers import BALANCERS

    data = DataConfig(tasks=[TaskSpec(name=n, path=str(DEMO_DATA_DIR / f"{n}.jsonl")) for n in TASKS])
    cfg = TrainConfig(data=data, balancer=BALANCERS[balancer].config())
    if quick:  # validation is most of a 10-step run's time
        cfg.data.max_val_samples = 16
    cfg.trainer.max_steps, cfg.trainer.eval_steps, cfg.trainer.output_dir = steps, steps, str(out)
    return train(cfg)["wall_seconds"]


def run(quick: bool = False) -> dict[str, Any]:
    from mtft.balancers import BALANCERS, is_adaptive

    steps, rounds = (10, 1) if quick else (STEPS, ROUNDS)  # quick: the code path, not a measurement to quote
    names = sorted(BALANCERS)
    adaptive = [name for name in names if is_adaptive(BALANCERS[name])]
    seconds: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(rounds):
            for name in names:
                seconds[name].append(_seconds(name, Path(tmp) / f"{name}-{round_}", steps, quick))
    best = {n: min(s) for n, s in seconds.items()}
    return {
        "suite": "balancer",
        "steps": steps,
        "seconds": seconds,
        "ratios": {f"{a}_over_{f}": best[a] / best[f] for a in adaptive for f in names if f not in adaptive},
    }
