"""`mtft-train` (also `python -m mtft.cli.train`): compose the Hydra config, convert it once, train."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mtft.config.errors import UserError
from mtft.config.hydra import register, to_train_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

register()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _main(cfg: DictConfig) -> None:
    try:
        config = to_train_config(cfg)
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # each sweep job gets its own directory
            config.trainer.output_dir = HydraConfig.get().runtime.output_dir
        from mtft.training.loop import train  # heavy imports only once the config is known to be valid

        train(config, OmegaConf.to_yaml(cfg))
    except UserError as err:
        print(f"mtft-train: error: {err}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
