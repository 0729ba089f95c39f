"""Compare the balancers on the demo suite and on a mixture with a small task that overfits.

Runs `mtft-train` for every (mixture, balancer), then writes docs/balancers/results.md (per-task final
validation loss, the worst task, the spread of final normalised losses) and one PNG per mixture of the task
weights over time. Usage: python scripts/experiments/balancers.py [--steps 1000] [--out runs/experiments]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BALANCERS = {
    "uniform": [],
    "data_balanced": [],
    "static": ["balancer.weights={add: 2.0, sentiment: 0.5}"],
    "coba": [],
    "famo": [],
}
MIXTURES = {"demo": ["data=demo"], "overfit": ["data=demo_overfit"]}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "balancers"


def run(mixture: str, balancer: str, steps: int, out: Path) -> Path:
    run_dir = out / mixture / balancer
    if not (run_dir / "summary.json").is_file():
        overrides = [*MIXTURES[mixture], f"balancer={balancer}", *BALANCERS[balancer]]
        overrides += [f"trainer.max_steps={steps}", "trainer.eval_steps=50", f"trainer.output_dir={run_dir}"]
        subprocess.run([sys.executable, "-m", "mtft.cli.train", *overrides], check=True, stdout=subprocess.DEVNULL)
    return run_dir


def table(mixture: str, runs: dict[str, Path]) -> list[str]:
    summaries = {b: json.loads((d / "summary.json").read_text())["tasks"] for b, d in runs.items()}
    tasks = list(next(iter(summaries.values())))
    lines = [f"### {mixture}", "", "| balancer | " + " | ".join(tasks) + " | worst task | spread of final/initial |"]
    lines.append("|---" * (len(tasks) + 3) + "|")
    for balancer, s in summaries.items():
        finals = {t: s[t]["final_val_loss"] for t in tasks}
        ratios = [s[t]["final_val_loss"] / s[t]["initial_val_loss"] for t in tasks]
        worst = max(finals, key=finals.get)
        cells = " | ".join(f"{finals[t]:.3f}" for t in tasks)
        lines.append(f"| {balancer} | {cells} | {worst} {finals[worst]:.3f} | {max(ratios) - min(ratios):.3f} |")
    return [*lines, ""]


def plot(mixture: str, runs: dict[str, Path]) -> Path:
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3), sharey=True)
    for ax, (balancer, run_dir) in zip(axes, runs.items(), strict=True):
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        for task in sorted({k.split("/")[1] for k in records[0] if k.endswith("/weight")}):
            ax.plot([r["step"] for r in records], [r[f"task/{task}/weight"] for r in records], label=task)
        ax.set_title(balancer)
        ax.set_xlabel("step")
    axes[0].set_ylabel("task weight")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    path = DOCS / f"weights_{mixture}.png"
    fig.savefig(path, dpi=80)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("runs/experiments/balancers"))
    args = parser.parse_args()
    DOCS.mkdir(parents=True, exist_ok=True)
    report = ["# Balancers on the demo suite", "", f"{args.steps} steps each; final validation loss per task.", ""]
    for mixture in MIXTURES:
        runs = {b: run(mixture, b, args.steps, args.out) for b in BALANCERS}
        report += table(mixture, runs) + [f"![weights]({plot(mixture, runs).name})", ""]
    (DOCS / "results.md").write_text("\n".join(report))
    print(DOCS / "results.md")


if __name__ == "__main__":
    main()
