"""One logger per run. Only rank 0 writes; other ranks get a logger that does nothing, so callers never branch.

metrics.jsonl is always written; the chosen backend (W&B, TensorBoard, or a null stand-in) gets the same
records and keys, plus tables (the data report at the start, sample generations at each evaluation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from mtft.logging.config import LoggerConfig


class Backend(Protocol):
    def log(self, record: dict[str, Any], step: int) -> None: ...

    def table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None: ...

    def finish(self, exit_code: int = 0) -> None: ...


class NullBackend:
    def log(self, record: dict[str, Any], step: int) -> None:
        pass

    def table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class RunLogger:
    def __init__(self, output_dir: Path | None, backend: Backend):
        self.output_dir = output_dir  # None on ranks other than 0
        self.backend = backend
        self.finished = False

    def log(self, record: dict[str, Any]) -> None:
        self._append("metrics.jsonl", record)
        self.backend.log(record, step=record["step"])

    def table(self, name: str, columns: list[str], rows: list[list[Any]], step: int, save: bool = False) -> None:
        """To the backend; with `save`, also to <output_dir>/<name>.jsonl, one object per row."""
        if save:
            for row in rows:
                self._append(f"{name}.jsonl", {"step": step, **dict(zip(columns, row, strict=True))})
        self.backend.table(name, columns, rows, step)

    def drop_after(self, step: int) -> None:
        """On resume: forget records a crashed run wrote past the checkpoint it resumes from."""
        for name in ("metrics.jsonl", "generations.jsonl"):
            path = self.output_dir / name if self.output_dir is not None else None
            if path is not None and path.exists():
                lines = path.read_text().splitlines(keepends=True)
                path.write_text("".join(line for line in lines if json.loads(line)["step"] <= step))

    def finish(self, exit_code: int = 0) -> None:
        """Close the backend's run once; a nonzero `exit_code` marks it failed (W&B shows the run as failed)."""
        if not self.finished:
            self.finished = True
            self.backend.finish(exit_code)

    def _append(self, name: str, record: dict[str, Any]) -> None:
        if self.output_dir is not None:
            with (self.output_dir / name).open("a") as handle:
                handle.write(json.dumps(record) + "\n")


def build_run_logger(cfg: LoggerConfig, output_dir: Path, run_config: dict[str, Any], rank: int) -> RunLogger:
    """`run_config` must already be redacted (logging/secrets.py)."""
    if rank != 0:
        return RunLogger(None, NullBackend())
    if cfg.name == "wandb":
        from mtft.logging.wandb_backend import WandbBackend

        return RunLogger(output_dir, WandbBackend(cfg, output_dir, run_config))
    if cfg.name == "tensorboard":
        from mtft.logging.tensorboard_backend import TensorBoardBackend

        return RunLogger(output_dir, TensorBoardBackend(output_dir, run_config))
    return RunLogger(output_dir, NullBackend())
