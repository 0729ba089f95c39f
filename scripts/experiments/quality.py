"""Quality experiments over seeds: which adapter, and which loss balancer, does best on each task?

Every run fine-tunes the same pretrained base (scripts/experiments/pretrain_base.py, cached) with `mtft-train`,
then scores its final checkpoint with `mtft-eval` (greedy, every validation sample). The report gives per-task
exact match as mean ± standard deviation over the seeds, and writes a markdown table and a PNG per mixture to
docs/results/.

- `adapters`: lora, smora, molora, mor1e with and without its intuition prior, at matched trainable parameters
  (see ADAPTERS), on the demo suite and on the conflicting suite (data=demo_conflict).
- `balancers`: uniform, data_balanced, static, coba, famo, dwa and uncertainty, with LoRA, on the demo suite.

Runs are cached in --out (a run with an eval.json is not run again) and run --jobs at a time, one thread each.
Usage: python scripts/experiments/quality.py adapters|balancers [--seeds 3] [--steps 600] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pretrain_base  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "results"
MIXTURES = {"demo": ["data=demo"], "conflict": ["data=demo_conflict"]}

# Matched on each of the base's layers × 7 projections (q, k, v, o, gate, up, down; sum of in+out = 2816, of in = 1280
# per layer): LoRA r16 has 16·2816 = 45,056 parameters per layer; SMoRA r11 has 11·2816 factors + an 11-way
# router (11·1280) = 45,056, the same; MoLoRA 4 experts × r4 has rank 16 in all plus a 4-way router (+11%);
# MoR1E 5 down × 5 up vectors has 5·2816 factors + a 25-way pair router (25·1280) = 46,080 (+2%); its prior adds
# a 4-cluster × 25 map per projection. The counts each run reports are in the table.
ADAPTERS = {
    "lora r16": ["adapter=lora", "adapter.rank=16"],
    "smora r11 top-4": ["adapter=smora", "adapter.rank=11", "adapter.top_k=4"],
    "molora 4×r4 top-2": ["adapter=molora", "adapter.num_experts=4", "adapter.expert_rank=4", "adapter.top_k=2"],
    "mor1e 5×5 top-5": ["adapter=mor1e", "adapter.num_down=5", "adapter.num_up=5", "adapter.top_k=5"],
    "mor1e 5×5 top-5 + prior": [
        "adapter=mor1e",
        "adapter.num_down=5",
        "adapter.num_up=5",
        "adapter.top_k=5",
        "adapter.intuition_clusters=4",
    ],
}
BALANCERS = {
    "uniform": ["balancer=uniform"],
    "data_balanced": ["balancer=data_balanced"],
    "static": ["balancer=static", "balancer.weights={add: 2.0, reverse: 2.0, sentiment: 0.5}"],
    "coba": ["balancer=coba"],
    "famo": ["balancer=famo"],
    "dwa": ["balancer=dwa"],
    "uncertainty": ["balancer=uncertainty"],
}
SUITES = {
    "adapters": {"variants": ADAPTERS, "mixtures": ["demo", "conflict"], "fixed": ["balancer=data_balanced"]},
    "balancers": {"variants": BALANCERS, "mixtures": ["demo"], "fixed": ADAPTERS["lora r16"]},
}


def run(base: Path, run_dir: Path, overrides: list[str], steps: int, seed: int) -> dict:
    """Train (unless done) and evaluate one run; returns its eval.json, with summary.json's fields added."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "env": env, "text": True}
    if not (run_dir / "eval" / "eval.json").is_file():
        train = [
            sys.executable,
            "-m",
            "mtft.cli.train",
            f"model.name_or_path={base}",
            *overrides,
            f"trainer.max_steps={steps}",
            f"trainer.eval_steps={steps // 6}",
            "trainer.eval_generations=0",
            f"trainer.seed={seed}",
            f"trainer.output_dir={run_dir}",
        ]
        _check(subprocess.run(train, **quiet), run_dir)
        checkpoint = f"checkpoint={run_dir / f'checkpoint-{steps}'}"
        evaluate = [sys.executable, "-m", "mtft.cli.eval", checkpoint, f"out={run_dir / 'eval'}", "batch_size=64"]
        _check(subprocess.run([*evaluate, "max_new_tokens=24"], **quiet), run_dir)
    report = json.loads((run_dir / "eval" / "eval.json").read_text())
    report["summary"] = json.loads((run_dir / "summary.json").read_text())
    report["metrics"] = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return report


def _check(result: subprocess.CompletedProcess, run_dir: Path) -> None:
    if result.returncode != 0:
        sys.exit(f"{run_dir}: exit {result.returncode}\n{result.stderr[-3000:]}")


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def convergence_ratios(report: dict) -> dict[str, float]:
    """Each task's final ÷ initial validation loss: how far the run brought it."""
    tasks = report["summary"]["tasks"]
    return {t: tasks[t]["final_val_loss"] / tasks[t]["initial_val_loss"] for t in tasks}


def cell(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.3f} ± {std:.3f}"


def table(suite: str, results: dict[str, list[dict]]) -> list[str]:
    tasks = list(next(iter(results.values()))[0]["tasks"])
    head = ["variant", "trainable", *tasks, "mean", "worst task", "mean val loss", "worst val loss"]
    if suite == "balancers":
        head.append("spread of final/initial val loss")
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for variant, reports in results.items():
        scores = [{t: r["tasks"][t]["exact_match"] for t in tasks} for r in reports]
        cells = [variant, f"{reports[0]['summary']['trainable_parameters']:,}"]
        cells += [cell([score[t] for score in scores]) for t in tasks]
        cells += [cell([statistics.mean(score.values()) for score in scores]), cell([min(s.values()) for s in scores])]
        losses = [[r["tasks"][t]["val_loss"] for t in tasks] for r in reports]
        cells += [cell([statistics.mean(loss) for loss in losses]), cell([max(loss) for loss in losses])]
        if suite == "balancers":
            cells.append(cell([max(c.values()) - min(c.values()) for c in map(convergence_ratios, reports)]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot(suite: str, mixture: str, results: dict[str, list[dict]]) -> Path:
    tasks = list(next(iter(results.values()))[0]["tasks"])
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(tasks), 3.2))
    width = 0.8 / len(results)
    for i, (variant, reports) in enumerate(results.items()):
        stats = [mean_std([r["tasks"][t]["exact_match"] for r in reports]) for t in tasks]
        x = np.arange(len(tasks)) + (i - (len(results) - 1) / 2) * width
        ax.bar(x, [m for m, _ in stats], width, yerr=[s for _, s in stats], capsize=2, label=variant)
    ax.set_xticks(np.arange(len(tasks)), tasks)
    ax.set_ylabel("exact match")
    ax.set_ylim(0, 1)
    ax.set_title(f"{suite} on {mixture}: mean ± std over seeds", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    path = DOCS / f"{suite}_{mixture}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def weights_plot(mixture: str, results: dict[str, list[dict]]) -> Path:
    """Each balancer's task weights over training (the first seed)."""
    fig, axes = plt.subplots(1, len(results), figsize=(2.6 * len(results), 2.6))  # own y-scales
    for ax, (variant, reports) in zip(axes, results.items(), strict=True):
        records = [r for r in reports[0]["metrics"] if any(k.endswith("/weight") for k in r)]
        for task in reports[0]["tasks"]:
            ax.plot([r["step"] for r in records], [r[f"task/{task}/weight"] for r in records], label=task)
        ax.set_title(variant, fontsize=9)
        ax.set_xlabel("step")
    axes[0].set_ylabel("task weight")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    path = DOCS / f"balancers_{mixture}_weights.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def header(suite: str, args: argparse.Namespace, base: Path) -> list[str]:
    command = f"python scripts/experiments/quality.py {suite} --seeds {args.seeds} --steps {args.steps}"
    fixed = " ".join(SUITES[suite]["fixed"])
    return [
        f"# {suite.capitalize()}: per-task exact match over {args.seeds} seeds",
        "",
        f"Made by `{command}` on 2 CPU cores ({time.strftime('%Y-%m-%d')}).",
        "",
        f"- **Base:** `{base.name}`, a {pretrain_base.ARCHITECTURE['hidden_size']}-wide,"
        f" {pretrain_base.ARCHITECTURE['num_layers']}-layer Llama with mtft's byte tokenizer, pretrained by"
        f" `scripts/experiments/pretrain_base.py` ({pretrain_base.STEPS} steps of full fine-tuning on"
        f" {len(pretrain_base.SKILLS)} generic skills, none of them an experiment's task).",
        f"- **Each run:** `mtft-train model.name_or_path=BASE {fixed} trainer.max_steps={args.steps}"
        " trainer.seed=S` with the variant's overrides, the trainer's defaults otherwise (batch 16, lr 3e-3,"
        " cosine). The seed sets the adapter's initialisation, the validation split and the sampling order.",
        "- **Score:** `mtft-eval` on the final checkpoint: greedy, every validation sample; exact match after SQuAD's"
        " normalisation (case, punctuation, articles, whitespace). Cells are mean ± standard deviation over the seeds;"
        " `mean` averages the tasks, `worst task` is each seed's lowest task score, averaged; `mean val loss` is"
        " the tasks' mean validation loss and `worst val loss` each seed's highest (lower is better): they still"
        " rank runs where exact match is 0.",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", choices=list(SUITES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/experiments"))
    args = parser.parse_args()
    suite = SUITES[args.suite]
    base = pretrain_base.pretrain(args.out.parent / "base")
    jobs = {
        (mixture, variant, seed): args.out
        / args.suite
        / mixture
        / re.sub(r"[^A-Za-z0-9.-]+", "_", variant)
        / f"seed{seed}"
        for mixture in suite["mixtures"]
        for variant in suite["variants"]
        for seed in range(1, args.seeds + 1)
    }

    def one(key):
        mixture, variant, seed = key
        overrides = [*MIXTURES[mixture], *suite["fixed"], *suite["variants"][variant]]
        report = run(base, jobs[key], overrides, args.steps, seed)
        print(f"done {mixture} {variant} seed {seed}", flush=True)
        return report

    with ThreadPoolExecutor(args.jobs) as pool:
        reports = dict(zip(jobs, pool.map(one, jobs), strict=True))
    DOCS.mkdir(parents=True, exist_ok=True)
    lines = header(args.suite, args, base)
    for mixture in suite["mixtures"]:
        results = {v: [reports[(mixture, v, s)] for s in range(1, args.seeds + 1)] for v in suite["variants"]}
        lines += [f"## {mixture}", "", *table(args.suite, results), ""]
        lines += [f"![{mixture}]({plot(args.suite, mixture, results).name})", ""]
        if args.suite == "balancers":
            lines += [f"![weights]({weights_plot(mixture, results).name})", ""]
    path = DOCS / f"{args.suite}.md"
    path.write_text("\n".join(lines))
    print(path)


if __name__ == "__main__":
    main()
