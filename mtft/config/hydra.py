"""The Hydra edge: the schema Hydra composes onto, resolvers, and the one conversion to TrainConfig.

The schema gives every typed section its defaults before the YAML groups are merged, so a user's
`data/mine.yaml` may list only `tasks:` and `data.max_seq_len=512` works as an override without a `+`.
Adapter and balancer options differ in their fields, so they stay untyped here and are checked by the
registry's dataclass on conversion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from mtft.config.schema import DataConfig, DeepSpeedConfig, LoggerConfig, ModelConfig, TrainerConfig
from mtft.config.train import TrainConfig, build_train_config

DEMO_DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "demo"


@dataclass
class HydraSchema:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = MISSING
    adapter: Any = MISSING
    balancer: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def register() -> None:
    ConfigStore.instance().store(name="train_schema", node=HydraSchema)
    if not OmegaConf.has_resolver("mtft_demo"):
        # ${mtft_demo:add.jsonl} -> the bundled demo file, wherever mtft is installed
        OmegaConf.register_new_resolver("mtft_demo", lambda name: str(DEMO_DATA_DIR / name))


def to_train_config(cfg: DictConfig) -> TrainConfig:
    raw = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    raw.pop("hydra", None)
    return build_train_config(raw)
