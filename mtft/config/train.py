"""The whole run's config: one typed object, validated once, handed to everything below the CLI."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mtft.adapters import ADAPTERS, AdapterConfig
from mtft.adapters.lora import LoraConfig
from mtft.balancers import BALANCERS, BalancerConfig
from mtft.balancers.static import DataBalancedConfig
from mtft.config.convert import from_dict
from mtft.config.sections import DeepSpeedConfig, TrainerConfig
from mtft.data.config import DataConfig
from mtft.errors import ConfigError, check
from mtft.logging.config import LoggerConfig
from mtft.models import ModelConfig


@dataclass
class TrainConfig:
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=LoraConfig)
    balancer: BalancerConfig = field(default_factory=DataBalancedConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    def __post_init__(self) -> None:
        self.balancer.check_tasks(self.data.task_names)
        self.balancer.check_routing()
        metric = self.trainer.early_stopping_metric
        if metric != "val_loss":
            task = metric.split("/", 1)[0]
            names = ", ".join(self.data.task_names)
            check(task in self.data.task_names, "trainer.early_stopping_metric", f"no task {task!r} (tasks: {names})")
            check(
                self.trainer.eval_generations > 0,
                "trainer.early_stopping_metric",
                f"{metric} is a generation metric: set trainer.eval_generations > 0",
            )
        if self.trainer.compile and self.deepspeed.stage == 3:  # ZeRO-3's gathering hooks break the compiled graphs
            raise ConfigError("trainer.compile", "not available under ZeRO-3 (deepspeed stage 3)")
        if self.trainer.cross_entropy == "chunked" and self.deepspeed.stage == 3:
            # the chunked loss reads the output head's weight directly, which ZeRO-3 keeps partitioned
            raise ConfigError(
                "trainer.cross_entropy", "chunked is not available under ZeRO-3 (deepspeed stage 3); use full"
            )


def build_train_config(raw: dict[str, Any]) -> TrainConfig:
    """Convert the composed config (plain dicts) to a TrainConfig; the registries pick adapter/balancer classes."""
    raw = dict(raw)
    raw["adapter"] = _from_registry(raw.get("adapter"), ADAPTERS, "adapter")
    raw["balancer"] = _from_registry(raw.get("balancer"), BALANCERS, "balancer")
    return from_dict(TrainConfig, raw)


def _from_registry(raw: Any, registry: Mapping[str, Any], key: str) -> Any:
    """The config dataclass of the registry entry that `raw["name"]` selects."""
    name = raw.get("name") if isinstance(raw, dict) else None
    if name not in registry:
        raise ConfigError(f"{key}.name", f"unknown {key} '{name}'; choose one of {', '.join(registry)}")
    return from_dict(registry[name].config, raw, key)
