"""Figures both mtft-report (PNGs from metrics.jsonl) and the W&B backend (live images) draw.

A leaf module below `report/` and `logging/`, so neither has to import the other (they sit in the same layer).
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a window, even where a display exists

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def short_layer_name(layer: str) -> str:
    """model.layers.3.self_attn.q_proj -> 3.self_attn.q_proj"""
    return layer.split("layers.", 1)[-1]


def router_heatmap(record: dict[str, Any]):
    """One logging window's load: router layers (rows) × experts (columns). Returns the matplotlib figure."""
    layers = [
        key[len("router/") : -len("/load")] for key in record if key.startswith("router/") and key.endswith("/load")
    ]
    load = np.array([record[f"router/{layer}/load"] for layer in layers])
    fig, ax = plt.subplots(figsize=(1.2 + 0.35 * load.shape[1], 1.2 + 0.18 * len(layers)))
    image = ax.imshow(load, aspect="auto", cmap="viridis", vmin=0, interpolation="nearest")
    ax.set_yticks(range(len(layers)), [short_layer_name(layer) for layer in layers], fontsize=6)
    ax.set_xlabel("expert")
    ax.set_title(f"router load, step {record['step']}", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig
