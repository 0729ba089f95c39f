"""The Hydra edge: the schema Hydra composes onto, resolvers, and the one conversion to TrainConfig.

The schema gives every typed section its defaults before the YAML groups are merged, so a user's
`data/mine.yaml` may list only `tasks:` and `data.max_seq_len=512` works as an override without a `+`. Every
default comes from a config dataclass (through its generated twin, `mtft.config.schemas`); a YAML option holds only
what differs from it.

Adapter and balancer options differ in their fields, so their sections are typed per option: each registry entry's
config is stored as `schema/<group>/<name>`, and train.yaml's defaults list merges the one named by the group's
choice (`adapter=smora` -> `schema/adapter/smora`, SMoRAConfig's defaults and types) before the option's YAML. A
registered method with no YAML file in configs/<group>/ gets an empty option there, so `adapter=<name>` works for a
method that is its module alone. A
user's own option under `--config-dir` with a name no registry entry has gets no schema there (its `name:` picks the
dataclass on conversion); it can take one with `defaults: [/schema/adapter/smora@_here_, _self_]`.

Hydra reports a bad override in several lines (and its search path); `config_error` turns those errors into
the one-line ConfigError every other config mistake gets: the key, the allowed options or the nearest key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.errors import MissingConfigException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from mtft.adapters import ADAPTERS
from mtft.balancers import BALANCERS
from mtft.config.schemas import schema_of
from mtft.config.train import TrainConfig, build_train_config
from mtft.data.synthetic import DEMO_DATA_DIR
from mtft.errors import ConfigError, unknown_key

PER_OPTION = {"adapter": ADAPTERS, "balancer": BALANCERS}  # sections typed by the option chosen, not here
# Inside the package, so a wheel or a non-editable install ships the configs with the code.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def train_schema() -> type:
    """TrainConfig as Hydra's schema: each section its dataclass's twin, but `Any` for the per-option sections."""
    sections = []
    for f in dataclasses.fields(schema_of(TrainConfig)):
        if f.name in PER_OPTION:
            sections.append((f.name, Any, field(default=MISSING)))
        else:
            sections.append((f.name, f.type, field(default=f.default, default_factory=f.default_factory)))
    return dataclasses.make_dataclass("HydraSchema", sections)


def register() -> None:
    """Store the schemas, generated afresh from the dataclasses and registries as they are now."""
    schema_of.cache_clear()
    store = ConfigStore.instance()
    store.store(name="train_schema", node=train_schema())
    for group, registry in PER_OPTION.items():
        for name in [*registry, *registry.aliases]:  # an alias: the option under its old name too
            store.store(group=f"schema/{group}", name=name, node=schema_of(registry[name].config))
            if not option_file(group, name).is_file():  # the option itself: its schema says it all
                store.store(group=group, name=name, node={})
    if not OmegaConf.has_resolver("mtft_demo"):
        # ${mtft_demo:add.jsonl} -> the bundled demo file, wherever mtft is installed
        OmegaConf.register_new_resolver("mtft_demo", lambda name: str(DEMO_DATA_DIR / name))


def option_file(group: str, name: str) -> Path:
    """The packaged YAML of an option; a method needs none (`register` stores an empty one), but may have one for
    comments or for values that differ from its dataclass's defaults."""
    return CONFIG_DIR / group / f"{name}.yaml"


def to_train_config(cfg: DictConfig) -> TrainConfig:
    try:
        raw = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as err:  # e.g. an interpolation that does not resolve
        raise config_error(err) from None
    raw.pop("hydra", None)
    return build_train_config(raw)


def config_error(err: Exception) -> ConfigError:
    """Hydra's or OmegaConf's error about the composed config as one ConfigError naming the key."""
    if isinstance(err, MissingConfigException) and "/" in (err.missing_cfg_file or ""):
        group, _, option = err.missing_cfg_file.rpartition("/")  # "adapter/nosuch" from `adapter=nosuch`
        if not err.options:
            return ConfigError(group, f"no config group '{group}' (asked for its option '{option}')")
        return ConfigError(group, f"no option '{option}'; the options are {', '.join(err.options)}")
    cause = err if isinstance(err, OmegaConfBaseException) else err.__cause__
    if isinstance(cause, OmegaConfBaseException) and cause.full_key:
        parent = cause.parent_node
        missing = isinstance(parent, DictConfig) and cause.key not in parent
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and missing:  # a misspelled `trainer.lrr=...`
            return unknown_key(cause.full_key, [str(k) for k in parent if k != "hydra"])
        return ConfigError(cause.full_key, _one_line(cause.msg))
    return ConfigError("", _one_line(str(err)))


def _one_line(message: str) -> str:
    """Hydra's message without its search path, pointers to docs and OmegaConf's node details, in one line."""
    lines = [line.strip() for line in message.split("Config search path:")[0].splitlines()]
    return "; ".join(line for line in lines if line and not line.startswith(_DETAILS))


_DETAILS = ("See https://", "Set the environment", "full_key:", "reference_type=", "object_type=")
