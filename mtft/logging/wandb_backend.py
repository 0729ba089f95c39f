"""Weights & Biases. Scalars keep metrics.jsonl's keys. A router layer's per-expert load becomes a W&B
histogram whose bars are the experts, and each evaluation adds a heatmap image of every layer's load."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mtft.logging.config import LoggerConfig
from mtft.logging.secrets import redact


class WandbBackend:
    def __init__(self, cfg: LoggerConfig, output_dir: Path, run_config: dict[str, Any]):
        import wandb

        self.wandb = wandb
        argv, sys.argv = sys.argv, redact(sys.argv)  # W&B records the command line with the run's metadata
        try:
            self.run = wandb.init(
                project=cfg.project,
                entity=cfg.entity,
                name=redact(cfg.run_name),
                group=redact(cfg.group),
                tags=redact(cfg.tags),
                mode=os.environ.get("WANDB_MODE", cfg.mode),
                dir=str(output_dir),
                config=run_config,
            )
        finally:
            sys.argv = argv

    def log(self, record: dict[str, Any], step: int) -> None:
        data: dict[str, Any] = {}
        for key, value in record.items():
            if key.startswith("router/") and key.endswith("/load"):
                data[key] = self.wandb.Histogram(np_histogram=(np.asarray(value), np.arange(len(value) + 1)))
            else:
                data[key] = value
        if any(key.endswith("/val_loss") for key in record) and any(key.endswith("/load") for key in record):
            import matplotlib.pyplot as plt

            from mtft.plotting import router_heatmap

            figure = router_heatmap(record)
            data["router/load_heatmap"] = self.wandb.Image(figure)  # rendered here, so the figure can go
            plt.close(figure)
        self.run.log(data, step=step)

    def table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        self.run.log({name: self.wandb.Table(columns=columns, data=rows)}, step=step)

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)
