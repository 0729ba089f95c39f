"""The logger section of the run config (`logger.*`), beside the logging code that reads it (config/ composes it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mtft.errors import check, check_choice


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb | tensorboard (metrics.jsonl is written whatever the choice)
    project: str = "mtft"  # W&B project
    entity: str | None = None  # W&B team or user
    run_name: str | None = None
    group: str | None = None  # W&B group; a -m sweep sets it to the sweep's directory name when unset
    tags: list[str] = field(default_factory=list)
    mode: str = "online"  # online | offline | disabled (WANDB_MODE in the environment wins)
    peak_tflops: float | None = None  # per device, for MFU; unset: looked up for known GPUs at bf16/fp16
    progress: str = "auto"  # auto (a bar on a terminal, plain lines otherwise) | bar | lines

    def __post_init__(self) -> None:
        check_choice(self.name, "name", ("none", "wandb", "tensorboard"))
        check_choice(self.mode, "mode", ("online", "offline", "disabled"))
        check_choice(self.progress, "progress", ("auto", "bar", "lines"))
        check(self.peak_tflops is None or self.peak_tflops > 0, "peak_tflops", f"must be > 0, got {self.peak_tflops}")
