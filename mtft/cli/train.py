"""`mtft-train` (also `python -m mtft.cli.train`): compose the Hydra config, convert it once, train."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mtft.config.hydra import CONFIG_DIR, config_error, option_file, register, to_train_config
from mtft.errors import ConfigError, UserError
from mtft.logging.console import quiet_library_warnings

register()
quiet_library_warnings()  # as every mtft command does (logging/console.py)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _main(cfg: DictConfig) -> None:
    try:
        config = to_train_config(cfg)
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:  # each sweep job: its own directory, its W&B run in the sweep's group
            config.trainer.output_dir = hydra_cfg.runtime.output_dir
            config.logger.group = config.logger.group or Path(hydra_cfg.sweep.dir).name
            config.logger.run_name = config.logger.run_name or f"{config.logger.group}-{hydra_cfg.job.num}"
        # heavy imports only once the config is known to be valid
        from mtft.distributed import collective_failure, several_ranks
        from mtft.training.guard import TrainingDiverged
        from mtft.training.loop import train

        try:
            train(config)
        except TrainingDiverged as err:  # non-finite losses or weights: exit 3, never a "successful" run
            print(f"mtft-train: error: {err}", file=sys.stderr)
            sys.exit(3)
        except Exception as err:
            meaning = collective_failure(err) if several_ranks() else None
            if meaning is None:
                raise
            timeout = f"trainer.collective_timeout={config.trainer.collective_timeout:g} s"
            print(f"mtft-train: error: rank {os.environ.get('RANK')}: {meaning} ({timeout}): {err}", file=sys.stderr)
            sys.exit(1)
    except UserError as err:
        where = _where_set(err.key) if isinstance(err, ConfigError) else ""
        print(f"mtft-train: error: {err}{where}", file=sys.stderr)
        sys.exit(2)


def _covers(name: str, key: str) -> bool:
    return key == name or key.startswith((name + ".", name + "["))  # data.tasks covers data.tasks[0].path


def _where_set(key: str) -> str:
    """Point at the command-line override or the group's YAML file that set `key`."""
    hydra_cfg = HydraConfig.get()
    overrides = OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False)  # as typed: `${...}` unresolved
    matches = [o for o in overrides if _covers(o.split("=", 1)[0].lstrip("+~"), key)]
    if matches:  # the most specific override, e.g. balancer.weights=... rather than balancer=static
        return f" (set on the command line: {max(matches, key=lambda o: len(o.split('=', 1)[0]))})"
    group = key.split(".", 1)[0]
    choice = hydra_cfg.runtime.choices.get(group)
    if not choice:
        return ""
    return f" (set in {_group_source(hydra_cfg.runtime.config_sources, group, choice)})"


def _group_source(config_sources: list, group: str, choice: str) -> str:
    """Where Hydra composed `group=choice` from, looked up in Hydra's search path order: a user's option under
    `--config-dir` (chosen, say, by their own primary config) is named where it is, not as a packaged path."""
    for source in config_sources:
        if source.schema == "file" and (path := Path(source.path) / group / f"{choice}.yaml").is_file():
            return f"{path} or its defaults"
    if (path := option_file(group, choice)).is_file():
        return f"{path} or its defaults"
    return f"the defaults of {group}={choice}"


def main() -> None:
    # The `deepspeed` launcher appends --local_rank=N (also in the environment, where mtft reads it); Hydra
    # would take it for an override.
    sys.argv = [arg for arg in sys.argv if not arg.startswith("--local_rank")]
    # Hydra prints a composition error (unknown option or key) in several lines with its search path, and exits 1.
    # Its documented HYDRA_FULL_ERROR switch passes the exception on instead, so it gets our one line and exit 2;
    # a user who set the switch still gets the full traceback they asked for.
    wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _main()
    except (HydraException, OmegaConfBaseException) as err:
        if wants_traceback:
            raise
        print(f"mtft-train: error: {config_error(err)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
