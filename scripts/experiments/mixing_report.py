"""docs/results/mixing.md and its plots, from scripts/experiments/mixing.py's runs and statistics: per-arm tables,
paired differences with their bootstrap intervals and verdicts, best step and rise, mix and validation-loss curves.
It states what was measured; which method won is written by people, in the page's OUTCOME section, which a
later render keeps."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from quality import cell  # noqa: E402  (mean ± std over seeds)
from real import GGUF, HEADLINE, score  # noqa: E402

from mtft.adapters import baseline_adapter  # noqa: E402

OUTCOME = "## What the runs show"  # written by people from the tables; kept when the page renders again
METRIC_TITLES = {"primary": "primary (mean headline)", "worst": "worst task", "val_loss": "mean final val loss"}


@dataclass(frozen=True)
class Report:
    arms: dict[str, Any]  # run directory name -> mixing.Arm
    experiments: dict[str, list[str]]  # section title -> its arms
    results: dict[str, list[dict]]  # arm -> per seed: eval.json with summary and metrics (real.Runner.report)
    which: dict[str, str]  # task -> its headline metric
    points: dict[str, dict[str, float]]  # arm -> each metric over all seeds and items
    comparisons: dict[str, dict[str, dict[str, Any]]]  # reference title -> arm -> metric -> mixing.Difference
    best: str
    lora_at_budget: dict[int, str]  # LoRA rank -> LoRA's arm at that budget
    budgets: dict[int, dict[str, Any]]  # LoRA rank -> the adapter configs run at its budget
    missing: dict[str, list[str]]  # budget -> compared methods with no configuration there
    sizes: Any  # mixing.Sizes
    command: str
    date: str


# ---- curves from the runs' records --------------------------------------------------------------------------


def val_curve(report: dict, task: str) -> dict[int, float]:
    """The task's validation loss at each full evaluation: before step 1 (summary.json) and metrics.jsonl's."""
    curve = {}
    initial = report.get("summary", {}).get("tasks", {}).get(task, {}).get("initial_val_loss")
    if initial is not None:
        curve[0] = initial
    curve.update({r["step"]: r[f"task/{task}/val_loss"] for r in report["metrics"] if f"task/{task}/val_loss" in r})
    return curve


def mix_curve(report: dict, task: str) -> dict[int, float]:
    return {r["step"]: r[f"task/{task}/mix"] for r in report["metrics"] if f"task/{task}/mix" in r}


def seed_mean(curves: list[dict[int, float]]) -> tuple[list[int], list[float]]:
    """Steps every seed has, and the mean over seeds there."""
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return steps, [statistics.mean(c[step] for c in curves) for step in steps]


def best_and_rise(report: dict, task: str) -> tuple[int | None, float | None]:
    """summary.json's best_step and rise (rise = final / best − 1); computed from the full evaluations where
    summary.json has no such keys."""
    summary = report.get("summary", {}).get("tasks", {}).get(task, {})
    if "best_step" in summary:
        return summary["best_step"], summary.get("rise")
    curve = val_curve(report, task)
    if not curve:
        return None, None
    step, best = min(curve.items(), key=lambda item: (item[1], item[0]))
    return step, curve[max(curve)] / best - 1


# ---- tables ----------------------------------------------------------------------------------------------------


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def header(cells: list[str]) -> list[str]:
    return [row(cells), "|---" * len(cells) + "|"]


def trainable(reports: list[dict]) -> int | None:
    return reports[0].get("summary", {}).get("trainable_parameters")


def arm_table(report: Report, names: list[str]) -> list[str]:
    which, tasks = report.which, list(report.which)
    head = ["arm", "run", "trainable", "vs LoRA at its budget"]
    head += [f"{t} {HEADLINE[which[t]]}" for t in tasks] + ["primary", "worst task", "mean final val loss"]
    lines = header(head)
    for name in names:
        arm, reports = report.arms[name], report.results[name]
        count, lora = trainable(reports), trainable(report.results[report.lora_at_budget[arm.budget]])
        cells = [arm.label, f"`{name}`", f"{count:,}" if count else "—"]
        cells.append(f"{count / lora - 1:+.1%}" if count and lora else "—")
        cells += [cell([r["tasks"][t][which[t]] for r in reports]) for t in tasks]
        cells.append(cell([score(r, which) for r in reports]))
        cells.append(f"{report.points[name]['worst']:.3f}")
        cells.append(cell([statistics.mean(r["tasks"][t]["val_loss"] for t in tasks) for r in reports]))
        lines.append(row(cells))
    return lines


def best_step_table(report: Report) -> list[str]:
    lines = header(["arm", *report.which])
    for name, reports in report.results.items():
        cells = [f"`{name}`"]
        for task in report.which:
            pairs = [best_and_rise(r, task) for r in reports]
            steps = ", ".join("—" if step is None else str(step) for step, _ in pairs)
            rises = [rise for _, rise in pairs if rise is not None]
            cells.append(f"{steps} / {statistics.mean(rises):+.1%}" if rises else f"{steps} / —")
        lines.append(row(cells))
    return lines


def comparison_table(differences: dict[str, dict[str, Any]]) -> list[str]:
    head = ["arm"]
    for metric in METRIC_TITLES.values():
        head += [f"Δ {metric} [95% CI]", "verdict"]
    lines = header(head)
    for name, by_metric in differences.items():
        cells = [f"`{name}`"]
        for metric in METRIC_TITLES:
            d = by_metric[metric]
            cells += [f"{d.observed:+.3f} [{d.low:+.3f}, {d.high:+.3f}]", d.verdict]
        lines.append(row(cells))
    return lines


# ---- plots -------------------------------------------------------------------------------------------------------


def plot_mix(report: Report, path: Path) -> Path | None:
    """Each task's sampling probability over steps (mean over seeds), a panel per arm whose mix moves; None when
    no run logged `task/<name>/mix`."""
    moving = [n for n, arm in report.arms.items() if arm.moving_mix and n in report.results]
    curves = {n: {t: seed_mean([mix_curve(r, t) for r in report.results[n]]) for t in report.which} for n in moving}
    if not any(steps for by_task in curves.values() for steps, _ in by_task.values()):
        return None
    fig, axes = plt.subplots(1, len(moving), figsize=(3.0 * len(moving), 2.8), squeeze=False)
    for ax, name in zip(axes[0], moving, strict=True):
        for task, (steps, values) in curves[name].items():
            ax.plot(steps, values, label=task)
        ax.set_title(report.arms[name].label, fontsize=8)
        ax.set_xlabel("step", fontsize=8)
    axes[0][0].set_ylabel("sampling probability", fontsize=8)
    axes[0][-1].legend(fontsize=6)
    return save(fig, path)


def plot_val_losses(report: Report, names: list[str], path: Path) -> Path:
    """Each task's validation loss over steps (mean over seeds): a panel per task, the arms as lines. The y axis
    spans the trained evaluations only: the untrained loss at step 0, several times higher, would flatten the
    differences between arms into one line."""
    tasks = list(report.which)
    fig, axes = plt.subplots(1, len(tasks), figsize=(2.6 * len(tasks), 2.8), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        trained = []
        for name in names:
            steps, values = seed_mean([val_curve(r, task) for r in report.results[name]])
            ax.plot(steps, values, label=name, linewidth=1)
            trained += [value for step, value in zip(steps, values, strict=True) if step > 0]
        if trained:
            low, high = min(trained), max(trained)
            margin = 0.05 * (high - low) or 0.05
            ax.set_ylim(low - margin, high + margin)
        ax.set_title(task, fontsize=8)
        ax.set_xlabel("step", fontsize=8)
    axes[0][0].set_ylabel("validation loss", fontsize=8)
    axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1, 1))
    return save(fig, path)


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ---- the page ----------------------------------------------------------------------------------------------------


def kept_outcome(page: Path) -> list[str]:
    """The OUTCOME section of an earlier render of `page` (its heading up to the next `## `), or nothing: the
    tables are the script's to rewrite, the verdict people wrote from them is not."""
    if not page.is_file():
        return []
    lines = page.read_text().splitlines()
    if OUTCOME not in lines:
        return []
    start = lines.index(OUTCOME)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def design(report: Report) -> list[str]:
    s, sizes = report.sizes.settings, report.sizes
    words = ", ".join(f"{task} {n}" for task, n in sizes.task_train_words.items())
    missing = "; ".join(f"at {budget}: {', '.join(names)}" for budget, names in report.missing.items() if names)
    tight = ", ".join(
        f"{', '.join(n for n in configs if n != baseline_adapter())} at LoRA r{rank}"
        for rank, configs in report.budgets.items()
        if rank != max(report.budgets)
    )
    return [
        f"- **Model:** SmolLM2-135M-Instruct from its GGUF (`{GGUF}`), bf16, one thread a run.",
        f"- **Suite:** scripts/experiments/real_suite.py; training words per task: {words}; {s.val_words} held-out"
        " words, the same in every task and in no task's training split.",
        f"- **Each run:** {s.steps} steps × {s.batch} samples, lr {s.lr:g} cosine with {s.warmup} warm-up steps;"
        f" every task's validation loss on every held-out word at step 0, every {sizes.eval_steps} steps and at the"
        f" end; seeds 1–{s.seeds}.",
        "- **Arms:** experiment 1, mixing and balancing on LoRA r16; experiment 2, the adapters at LoRA r16's"
        f" budget and at a tight one, each mixture at the LoRA rank nearest 4 where the registry matches it ({tight}),"
        " beside LoRA at that rank (`compared_adapters`, ±5% of LoRA's trainable parameters, run variants counted),"
        " on the best static mixing; each run's overrides are listed below."
        + (f" No configuration within the budget: {missing}." if missing else ""),
        "- **Metrics** (mtft-eval, greedy, on every held-out word): primary = the mean over tasks of each task's"
        " headline metric (exact match; ROUGE-L for define); worst task = the lowest task mean; mean final"
        " validation loss over tasks.",
        "- **Statistics:** paired differences (same seeds, same held-out items); 95% percentile intervals from"
        " 10,000 bootstrap resamples of seeds and, per task, held-out items (fixed seed); losses resampled per item"
        " from mtft-eval's sample_losses.jsonl. *better* / *worse*: the interval excludes 0; else *within noise*.",
    ]


def overrides_table(report: Report) -> list[str]:
    """What each arm adds to the shared schedule on mtft-train's command line."""
    lines = header(["run", "mtft-train overrides"])
    return lines + [row([f"`{name}`", f"`{' '.join(arm.overrides)}`"]) for name, arm in report.arms.items()]


def render(report: Report, docs: Path) -> Path:
    docs.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Mixing unequal tasks: SmolLM2-135M-Instruct on FreeDict and WordNet",
        "",
        f"Made by `{report.command}` on {report.date}. The design, fixed before the runs: the docstring of"
        " scripts/experiments/mixing.py.",
        "",
        *design(report),
        "",
        *kept_outcome(docs / "mixing.md"),
    ]
    for index, (title, names) in enumerate(report.experiments.items(), start=1):
        figure = plot_val_losses(report, names, docs / f"mixing_val_loss_{index}.png")
        lines += [f"## {title}", "", *arm_table(report, names), "", f"![validation loss]({figure.name})", ""]
    lines += [
        f"**The best static mixing: `{report.best}`**, by the rule fixed beforehand: of natural, uniform and"
        " temperature mixing with the token-mean loss, the highest primary metric averaged over seeds.",
        "",
    ]
    for title, differences in report.comparisons.items():
        lines += [f"## Paired differences against {title}", "", *comparison_table(differences), ""]
    lines += ["## Each task's best step and rise (per seed's best step / mean rise)", "", *best_step_table(report)]
    mix = plot_mix(report, docs / "mixing_mix.png")
    lines += ["", "## The moving mixes", ""]
    lines.append(f"![mix]({mix.name})" if mix else "No run logged `task/<name>/mix`.")
    lines += ["", "## The arms' overrides", "", *overrides_table(report)]
    path = docs / "mixing.md"
    path.write_text("\n".join(lines) + "\n")
    return path
