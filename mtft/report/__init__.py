"""`mtft-report RUN_DIR`: PNG plots and a short markdown summary of a run, from its files alone."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mtft.errors import DataError
from mtft.report.plots import Records, plot_balancer, plot_losses, plot_router_load, plot_weights, series, task_names


def read_metrics(run_dir: Path) -> Records:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise DataError(path, None, None, "not found: is this an mtft run directory?")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(path, number, None, f"malformed JSON ({err})") from None
    if not records:
        raise DataError(path, None, None, "no records yet: the run has not logged a step")
    return records


def write_report(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Writes losses.png, weights.png, router_load.png and balancer.png (those that apply) and summary.md into
    `out_dir` (default RUN_DIR/report); returns the summary's path."""
    records = read_metrics(run_dir)
    out = out_dir or run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    best = best_points(records, summary)
    images = [
        plot_losses(records, out / "losses.png", best),
        plot_weights(records, out / "weights.png"),
        plot_router_load(records, out / "router_load.png"),
        plot_balancer(records, out / "balancer.png"),
    ]
    path = out / "summary.md"
    path.write_text(summary_markdown(run_dir, records, summary, [i.name for i in images if i is not None]))
    return path


def best_points(records: Records, summary: dict[str, Any] | None) -> dict[str, tuple[int, float]]:
    """Each task's best full evaluation as (step, validation loss): summary.json's once the run has finished (it
    counts the evaluation before step 1 too), else the lowest finite one logged so far. A task with none is absent."""
    best = {}
    for name in task_names(records):
        points = [(v, s) for s, v in zip(*series(records, f"task/{name}/val_loss"), strict=True) if math.isfinite(v)]
        if points:
            loss, step = min(points)  # a tie: the earlier step
            best[name] = (step, loss)
    for name, task in (summary or {}).get("tasks", {}).items():
        if task.get("best_val_loss") is not None:  # a summary.json from before best_* (2026-12) has none
            best[name] = (task["best_step"], task["best_val_loss"])
    return best


def summary_markdown(run_dir: Path, records: Records, summary: dict[str, Any] | None, images: list[str]) -> str:
    last = records[-1]
    lines = [f"# Run report: {run_dir.name}", ""]
    if summary is not None:
        lines.append(
            f"{summary['steps']} steps in {summary['wall_seconds']:.1f} s, {summary['tokens']:,} tokens, "
            f"{summary['trainable_parameters']:,} trainable parameters."
        )
    else:
        lines.append(f"Unfinished: {last['step']} steps logged so far (no summary.json yet).")
    header = "| task | val loss at start | val loss now | change | best val loss (step) | above best | weight now |"
    lines += ["", header + " train loss now |", "|---|---|---|---|---|---|---|---|"]
    finished = (summary or {}).get("tasks", {})
    starts = {n: t["initial_val_loss"] for n, t in finished.items()}
    best = best_points(records, summary)
    changes, rises = {}, {}
    for name in task_names(records):
        _, val = series(records, f"task/{name}/val_loss")
        _, train = series(records, f"task/{name}/loss")
        first = starts.get(name, val[0] if val else None)  # step 0's, once the run has finished
        latest = val[-1] if val else None
        if first and latest is not None:
            changes[name] = (latest - first) / first
        if finished.get(name, {}).get("rise") is not None:
            rises[name] = finished[name]["rise"]
        elif name in best and latest is not None and math.isfinite(latest) and best[name][1] > 0:
            rises[name] = latest / best[name][1] - 1  # so far, as summary.json's `rise` will be at the end
        best_cell = f"{best[name][1]:.4f} ({best[name][0]})" if name in best else "–"
        weight = last.get(f"task/{name}/weight", 0)
        lines.append(
            f"| {name} | {_num(first)} | {_num(latest)} | {_pct(changes.get(name))} | {best_cell} | "
            f"{_pct(rises.get(name))} | {weight:.3f} | {_num(train[-1] if train else None)} |"
        )
    if changes:
        slowest = max(changes, key=changes.get)
        lines += [
            "",
            f"Slowest task: **{slowest}** (validation loss {changes[slowest]:+.1%} since the start).",
        ]
    if rises and max(rises.values()) > 0:
        worst = max(rises, key=rises.get)
        lines += [
            "",
            f"Furthest above its best: **{worst}** (validation loss now {rises[worst]:+.1%} over its best, "
            f"{best[worst][1]:.4f} at step {best[worst][0]}).",
        ]
    speed = [f"{last['tokens_per_second']:,.0f} tokens/s"]
    speed += [f"{last[k]:,.1f} {unit}" for k, unit in (("samples_per_second", "samples/s"),) if k in last]
    speed += (
        [f"{last['throughput/tflops_per_device']:.3g} TFLOP/s per device"]
        if "throughput/tflops_per_device" in last
        else []
    )
    speed += [f"MFU {last['throughput/mfu']:.1%}"] if "throughput/mfu" in last else []
    speed += [f"peak {k.split('/')[-1][5:-3].upper()} {v:.2f} GB" for k, v in last.items() if k.startswith("memory/")]
    lines += ["", "Throughput at the last log: " + ", ".join(speed) + "."]
    if "router/mean_entropy" in last:
        lines.append(
            f"Router at the last log: mean normalised entropy {last['router/mean_entropy']:.3f}, "
            f"{last['router/dead_experts']} dead experts."
        )
    lines.append("")
    lines += [f"![{Path(image).stem}]({image})" for image in images]
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1%}"
