"""Test helpers: compose the config as mtft-train would, small-data overrides, CLI runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mtft.cli.train import CONFIG_DIR
from mtft.config.hydra import register, to_train_config
from mtft.config.train import TrainConfig

register()

LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# metrics that depend on the clock or the process, not on the computation: left out of exact comparisons
MEASURED = ("tokens_per_second", "samples_per_second", "throughput/", "memory/")


def computed(record: dict) -> dict:
    """A metrics.jsonl record without its measured (timing and memory) fields."""
    return {k: v for k, v in record.items() if not k.startswith(MEASURED)}


def compose_config(overrides: list[str] | None = None) -> TrainConfig:
    """The TrainConfig `mtft-train <overrides>` would build."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides or [])
    return to_train_config(cfg)


def compose_raw(overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return OmegaConf.to_container(compose("train", overrides=overrides or []), resolve=True)


def small_data_overrides(paths: dict[str, Path], generations: int = 0) -> list[str]:
    """The given task files, small validation splits, and no sample generations unless asked (each generation
    is up to 64 sequential forwards: seconds per evaluation that most tests do not look at)."""
    tasks = ", ".join(f"{{name: {n}, path: '{p}'}}" for n, p in paths.items())
    return [f"data.tasks=[{tasks}]", "data.max_val_samples=8", f"trainer.eval_generations={generations}"]


def run_cli(
    args: list[str], timeout: int = 300, script: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m mtft.cli.train ARGS` (or the installed `mtft-train` script) in a clean environment:
    no launch variables from this test process, W&B offline, plus `env`."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS} | {"WANDB_MODE": "offline"} | (env or {})
    command = [str(Path(sys.executable).parent / "mtft-train")] if script else [sys.executable, "-m", "mtft.cli.train"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, env=env)
