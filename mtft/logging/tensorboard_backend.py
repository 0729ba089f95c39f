"""TensorBoard event files under <output_dir>/tensorboard: scalars with metrics.jsonl's keys, router loads as
histograms, tables as markdown text. Needs the `tensorboard` package (pip install 'mtft[tensorboard]')."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mtft.errors import ConfigError


class TensorBoardBackend:
    def __init__(self, output_dir: Path, run_config: dict[str, Any]):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "logger.name", "tensorboard is not installed: pip install 'mtft[tensorboard]', or use logger=wandb"
            ) from None
        self.writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"))
        self.writer.add_text("config", "```json\n" + json.dumps(run_config, indent=2) + "\n```", 0)

    def log(self, record: dict[str, Any], step: int) -> None:
        for key, value in record.items():
            if key == "step":
                continue
            if isinstance(value, list):  # a router layer's per-expert load: the histogram's bars are experts
                load = np.asarray(value, dtype=float)
                experts = np.arange(len(load))
                self.writer.add_histogram_raw(
                    key,
                    min=0,
                    max=len(load) - 1,
                    num=float(load.sum()),
                    sum=float((experts * load).sum()),
                    sum_squares=float((experts**2 * load).sum()),
                    bucket_limits=list(experts + 0.5),
                    bucket_counts=list(load),
                    global_step=step,
                )
            elif isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)

    def table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
        self.writer.add_text(name, "\n".join(lines), step)

    def finish(self, exit_code: int = 0) -> None:
        self.writer.close()
