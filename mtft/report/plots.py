"""The run's curves as PNGs, drawn with matplotlib from metrics.jsonl alone (no W&B, no network)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a window, even where a display exists

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mtft.plotting import short_layer_name  # noqa: E402

Records = list[dict[str, Any]]
DPI = 110


def series(records: Records, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of every record that holds `key`."""
    points = [(r["step"], r[key]) for r in records if key in r]
    return [s for s, _ in points], [v for _, v in points]


def task_names(records: Records) -> list[str]:
    names: dict[str, None] = {}
    for record in records:
        for key in record:
            if key.startswith("task/") and key.endswith("/weight"):
                names[key.split("/")[1]] = None
    return list(names)


def _colors(names: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_losses(records: Records, path: Path, best: dict[str, tuple[int, float]] | None = None) -> Path:
    """Training loss (per logging window) and validation loss, one colour per task, side by side. `best`: each
    task's best evaluation, (step, loss), marked with a star, so a curve that rose after it shows overfitting."""
    names = task_names(records)
    colors = _colors(names)
    best = best or {}
    fig, (train_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for name in names:
        train_ax.plot(*series(records, f"task/{name}/loss"), color=colors[name], label=name, linewidth=1.2)
        val_ax.plot(*series(records, f"task/{name}/val_loss"), "o-", color=colors[name], label=name, markersize=3)
        if name in best:
            step, loss = best[name]
            val_ax.plot([step], [loss], "*", color=colors[name], markersize=13, markeredgecolor="black", zorder=3)
    val_title = "validation loss (star: each task's best)" if best else "validation loss"
    for ax, title in ((train_ax, "training loss"), (val_ax, val_title)):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    train_ax.set_ylabel("mean token cross-entropy")
    val_ax.legend(fontsize=8)
    return _save(fig, path)


def weight_panels(records: Records) -> dict[str, str]:
    """What weights.png shows, key suffix -> title: the weights the loss took, and the sampling probabilities when
    they moved during the run (balancer.apply_to=sampling|both) or were never logged (runs before `mix`)."""
    panels = {"weight": "task weights (the loss)"}
    names = task_names(records)
    if any(len(set(series(records, f"task/{name}/mix")[1])) > 1 for name in names):
        panels["mix"] = "sampling probabilities (the mix)"
    return panels


def plot_weights(records: Records, path: Path) -> Path:
    """The balancer's task weights over time, and the mix they drove beside them where it moved."""
    names, panels = task_names(records), weight_panels(records)
    colors = _colors(names)
    fig, axes = plt.subplots(1, len(panels), figsize=(8 * len(panels), 3.6), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels.items(), strict=True):
        for name in names:
            ax.step(*series(records, f"task/{name}/{key}"), where="post", color=colors[name], label=name)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def router_layers(records: Records) -> list[str]:
    layers: dict[str, None] = {}
    for record in records:
        for key in record:
            if key.startswith("router/") and key.endswith("/load"):
                layers[key[len("router/") : -len("/load")]] = None
    return list(layers)


def plot_router_load(records: Records, path: Path) -> Path | None:
    """One heatmap per router layer: the share of tokens each expert got (rows) in each logging window (columns).
    Up to 48 layers are drawn, spread evenly over the model; None for a run without routers."""
    layers = router_layers(records)
    if not layers:
        return None
    shown = [layers[i] for i in np.linspace(0, len(layers) - 1, min(len(layers), 48)).round().astype(int)]
    shown = list(dict.fromkeys(shown))
    cols = min(4, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False, layout="constrained")
    image = None
    for ax, layer in zip(axes.flat, shown, strict=False):
        steps, loads = series(records, f"router/{layer}/load")
        load = np.array(loads).T  # experts × windows
        image = ax.imshow(load, aspect="auto", cmap="viridis", vmin=0, interpolation="nearest")
        ax.set_title(short_layer_name(layer), fontsize=8)
        ticks = np.linspace(0, len(steps) - 1, min(len(steps), 4)).round().astype(int)
        ax.set_xticks(ticks, [str(steps[t]) for t in ticks], fontsize=7)
        ax.set_ylabel("expert", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    fig.suptitle("router load per layer: share of tokens per expert, by step", fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="load share")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_balancer(records: Records, path: Path) -> Path | None:
    """The balancer's internals (CoBa: RCS, ACS per task and the divergence factor), or None if it has none."""
    keys = sorted({k for r in records for k in r if k.startswith("balancer/")})
    if not keys:
        return None
    groups: dict[str, list[str]] = {}
    for key in keys:
        parts = key.split("/")
        groups.setdefault(parts[1] if len(parts) > 2 else "scalar", []).append(key)
    colors = _colors(task_names(records))  # a task keeps its colour from the loss plot
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), squeeze=False)
    for ax, (group, members) in zip(axes.flat, groups.items(), strict=True):
        for key in members:
            label = key.split("/")[-1]
            ax.plot(*series(records, key), label=label, color=colors.get(label), linewidth=1.2)
        title = group if group != "scalar" else ", ".join(k.split("/")[-1] for k in members)
        ax.set_title(f"balancer: {title}", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)
