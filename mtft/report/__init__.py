"""`mtft-report RUN_DIR`: PNG plots and a short markdown summary of a run, from its files alone."""

from __future__ import annotations

import json
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
    images = [
        plot_losses(records, out / "losses.png"),
        plot_weights(records, out / "weights.png"),
        plot_router_load(records, out / "router_load.png"),
        plot_balancer(records, out / "balancer.png"),
    ]
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    path = out / "summary.md"
    path.write_text(summary_markdown(run_dir, records, summary, [i.name for i in images if i is not None]))
    return path


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
    header = "| task | val loss at start | val loss now | change | weight now | train loss now |"
    lines += ["", header, "|---|---|---|---|---|---|"]
    starts = {n: t["initial_val_loss"] for n, t in (summary or {}).get("tasks", {}).items()}
    changes = {}
    for name in task_names(records):
        _, val = series(records, f"task/{name}/val_loss")
        _, train = series(records, f"task/{name}/loss")
        first = starts.get(name, val[0] if val else None)  # step 0's, once the run has finished
        latest = val[-1] if val else None
        if first and latest is not None:
            changes[name] = (latest - first) / first
        lines.append(
            f"| {name} | {_num(first)} | {_num(latest)} | "
            f"{f'{changes[name]:+.1%}' if name in changes else '–'} | {last.get(f'task/{name}/weight', 0):.3f} | "
            f"{_num(train[-1] if train else None)} |"
        )
    if changes:
        slowest = max(changes, key=changes.get)
        lines += [
            "",
            f"Slowest task: **{slowest}** (validation loss {changes[slowest]:+.1%} since the start).",
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
