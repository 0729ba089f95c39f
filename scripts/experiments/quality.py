"""Quality experiments over seeds: which adapter, and which loss balancer, does best on each task?

Every run fine-tunes the same pretrained base (scripts/experiments/pretrain_base.py, cached) with `mtft-train`,
then scores its final checkpoint with `mtft-eval` (greedy, every validation sample). The report gives per-task
exact match as mean ± standard deviation over the seeds, and writes a markdown table and a PNG per mixture to
docs/results/.

- `adapters`: every adapter the registry compares, at its defaults and again with its run variants (MoR1E without
  and with its intuition prior), each sized by the registry to LoRA r16's trainable parameters on the base's
  Linears (`adapter_variants`, sizing.py), on the demo suite and on the conflicting suite (data=demo_conflict).
- `balancers`: every registered balancer that weighs the loss (`balancer_variants`; one that only sets the sampling
  mix has nothing to weigh here), with LoRA r16, on the demo suite.

Runs are cached in --out (a run with an eval.json is not run again) and run --jobs at a time, one thread each.
Usage: python scripts/experiments/quality.py adapters|balancers [--seeds 3] [--steps 600] [--jobs 2]
"""

from __future__ import annotations

import argparse
import dataclasses
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
import sizing  # noqa: E402

from mtft.adapters import baseline_adapter  # noqa: E402
from mtft.balancers import BALANCERS  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "results"
MIXTURES = {"demo": ["data=demo"], "conflict": ["data=demo_conflict"]}
SUITES = {"adapters": ["demo", "conflict"], "balancers": ["demo"]}  # suite -> the mixtures it runs on
LORA_RANK = 16  # every adapter at LoRA r16's trainable parameters (alpha 32), as the registry sizes it
# Balancer settings by field, for whichever balancer's config has it: static's weights, for the demo suite's tasks.
BALANCER_SETTINGS = {"weights": "{add: 2.0, reverse: 2.0, sentiment: 0.5}"}


def adapter_variants(base: Path) -> dict[str, list[str]]:
    """Run name -> overrides: every method the registry compares at LoRA r16's budget on the base's Linears, at its
    defaults and again with its run variants fixed (`mor1e`, `mor1e+intuition_clusters_4`); the baseline first."""
    variants = sizing.variants_at(LORA_RANK, sizing.meta_model(base))
    return {name: list(sizing.adapter_overrides(config)) for name, config in variants.items()}


def balancer_variants() -> dict[str, list[str]]:
    """Run name -> overrides: every registered balancer whose config weighs the loss by default, with the settings
    of BALANCER_SETTINGS that its config has."""
    variants = {}
    for name, method in BALANCERS.items():
        if method.config().to_loss:
            fields = {field.name for field in dataclasses.fields(method.config)}
            settings = [f"balancer.{key}={value}" for key, value in BALANCER_SETTINGS.items() if key in fields]
            variants[name] = [f"balancer={name}", *settings]
    return variants


def suite_runs(suite: str, base: Path) -> tuple[dict[str, list[str]], list[str]]:
    """A suite's variants (run name -> overrides) and the overrides every one of its runs shares: the adapters with
    the data_balanced loss, or the loss balancers with LoRA r16."""
    adapters = adapter_variants(base)
    if suite == "adapters":
        return adapters, ["balancer=data_balanced"]
    return balancer_variants(), adapters[baseline_adapter()]


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


def header(suite: str, args: argparse.Namespace, base: Path, shared: list[str]) -> list[str]:
    command = f"python scripts/experiments/quality.py {suite} --seeds {args.seeds} --steps {args.steps}"
    fixed = " ".join(shared)
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
    base = pretrain_base.pretrain(args.out.parent / "base")
    variants, shared = suite_runs(args.suite, base)
    jobs = {
        (mixture, variant, seed): args.out
        / args.suite
        / mixture
        / re.sub(r"[^A-Za-z0-9.-]+", "_", variant)
        / f"seed{seed}"
        for mixture in SUITES[args.suite]
        for variant in variants
        for seed in range(1, args.seeds + 1)
    }

    def one(key):
        mixture, variant, seed = key
        overrides = [*MIXTURES[mixture], *shared, *variants[variant]]
        report = run(base, jobs[key], overrides, args.steps, seed)
        print(f"done {mixture} {variant} seed {seed}", flush=True)
        return report

    with ThreadPoolExecutor(args.jobs) as pool:
        reports = dict(zip(jobs, pool.map(one, jobs), strict=True))
    DOCS.mkdir(parents=True, exist_ok=True)
    lines = header(args.suite, args, base, shared)
    for mixture in SUITES[args.suite]:
        results = {v: [reports[(mixture, v, s)] for s in range(1, args.seeds + 1)] for v in variants}
        lines += [f"## {mixture}", "", *table(args.suite, results), ""]
        lines += [f"![{mixture}]({plot(args.suite, mixture, results).name})", ""]
        if args.suite == "balancers":
            lines += [f"![weights]({weights_plot(mixture, results).name})", ""]
    path = DOCS / f"{args.suite}.md"
    path.write_text("\n".join(lines))
    print(path)


if __name__ == "__main__":
    main()
