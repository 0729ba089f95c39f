"""Run logging: metrics.jsonl always (rank 0), plus one backend (W&B, or a null stand-in)."""

from mtft.logging.run_logger import RunLogger, build_run_logger

__all__ = ["RunLogger", "build_run_logger"]
