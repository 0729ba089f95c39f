"""One logger per run. Only rank 0 writes; other ranks get a logger that does nothing, so callers never branch."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mtft.config.schema import LoggerConfig


class NullBackend:
    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbBackend:
    def __init__(self, cfg: LoggerConfig, output_dir: Path, run_config: dict[str, Any]):
        import wandb

        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            name=cfg.run_name,
            group=cfg.group,
            tags=cfg.tags,
            mode=os.environ.get("WANDB_MODE", cfg.mode),
            dir=str(output_dir),
            config=run_config,
        )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self) -> None:
        self.run.finish()


class RunLogger:
    def __init__(self, metrics_path: Path | None, backend: NullBackend | WandbBackend):
        self.metrics_path = metrics_path
        self.backend = backend

    def log(self, record: dict[str, Any]) -> None:
        if self.metrics_path is not None:
            with self.metrics_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        self.backend.log(record, step=record["step"])

    def drop_after(self, step: int) -> None:
        """On resume: forget records a crashed run wrote past the checkpoint it resumes from."""
        if self.metrics_path is None or not self.metrics_path.exists():
            return
        lines = self.metrics_path.read_text().splitlines(keepends=True)
        self.metrics_path.write_text("".join(line for line in lines if json.loads(line)["step"] <= step))

    def finish(self) -> None:
        self.backend.finish()


def build_run_logger(cfg: LoggerConfig, output_dir: Path, run_config: dict[str, Any], rank: int) -> RunLogger:
    if rank != 0:
        return RunLogger(None, NullBackend())
    backend = WandbBackend(cfg, output_dir, run_config) if cfg.name == "wandb" else NullBackend()
    return RunLogger(output_dir / "metrics.jsonl", backend)
