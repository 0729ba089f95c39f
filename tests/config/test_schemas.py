"""Defaults written once: Hydra's schema is generated from the config dataclasses, so a default changed in a dataclass
changes the composed config, a YAML option holds only what differs, and adapter and balancer sections are typed by
the option chosen."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir

from mtft.adapters import ADAPTERS, AdapterMethod, lora
from mtft.adapters.smora import SMoRAConfig
from mtft.balancers import BALANCERS
from mtft.balancers.coba import CoBaConfig
from mtft.cli.train import CONFIG_DIR
from mtft.config.hydra import register, to_train_config
from mtft.config.schemas import schema_of
from mtft.config.sections import TrainerConfig
from mtft.config.train import TrainConfig
from mtft.data.config import TaskSpec
from mtft.models import TinyModelConfig
from tests.config.test_errors import reported
from tests.helpers import compose_config


@pytest.fixture
def regenerated_schemas():
    """For tests that change a dataclass or a registry: the schemas are generated again afterwards."""
    yield register
    register()


def test_a_changed_dataclass_default_changes_the_composed_config(monkeypatch, regenerated_schemas):
    """One default per section kind: a per-option section (adapter, balancer), a typed section (trainer), a nested
    dataclass (model.tiny) and a dataclass in a list (each of data.tasks). No YAML option restates any of them."""
    changes = [
        (SMoRAConfig, "top_k", 6),
        (CoBaConfig, "history", 31),
        (TrainerConfig, "max_steps", 77),
        (TinyModelConfig, "num_layers", 3),
        (TaskSpec, "format", "messages"),
    ]
    before = compose_config(["adapter=smora", "balancer=coba"])
    for cls, name, value in changes:
        monkeypatch.setattr(cls.__dataclass_fields__[name], "default", value)
    regenerated_schemas()
    after = compose_config(["adapter=smora", "balancer=coba"])
    assert (before.adapter.top_k, after.adapter.top_k) == (4, 6)
    assert (before.balancer.history, after.balancer.history) == (200, 31)
    assert (before.trainer.max_steps, after.trainer.max_steps) == (1000, 77)
    assert (before.model.tiny.num_layers, after.model.tiny.num_layers) == (2, 3)
    assert {t.format for t in before.data.tasks} == {"auto"} and {t.format for t in after.data.tasks} == {"messages"}


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _section_class(group: str, option: str) -> type:
    if group in ("adapter", "balancer"):
        return {"adapter": ADAPTERS, "balancer": BALANCERS}[group][option].config
    return typing.get_type_hints(TrainConfig)[group]


# Keys that say what an option is may equal today's default: deepspeed=zero0 is stage 0, and model=tiny the tiny
# model, whatever the dataclass's default becomes.
OPTION_KEYS = {"deepspeed": {"stage"}, "logger": {"name"}, "model": {"name_or_path"}}


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}={p.stem}")
def test_no_yaml_option_restates_a_default(path):
    """Each other key a group's YAML sets differs from its dataclass's default (nested dataclasses key by key). An
    option in the global package (`# @package _global_`, e.g. model=hf's trainer.lr) is checked section by section."""
    group = path.parent.name
    loaded = yaml.safe_load(path.read_text()) or {}
    sections = loaded if path.read_text().startswith("# @package _global_") else {group: loaded}
    for section, keys in sections.items():
        cls = _section_class(group, path.stem) if section == group else typing.get_type_hints(TrainConfig)[section]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in keys.items():
            if section == group and key in OPTION_KEYS.get(group, ()):
                continue
            default = _default(fields[key])
            if dataclasses.is_dataclass(default):
                nested = dataclasses.asdict(default)
                assert all(nested[k] != v for k, v in value.items()), f"{path}: {key} restates a default"
            else:
                assert value != default, f"{path}: {section}.{key}: {value!r} is the dataclass default"


def test_generated_schema_widens_only_what_omegaconf_cannot_check():
    hints = typing.get_type_hints(schema_of(lora.LoraConfig))
    assert hints["target_modules"] is Any  # str | list[str]: no unions in OmegaConf 2.3
    assert hints["rank"] is int and hints["alpha"] is float and hints["name"] is str
    tasks = typing.get_type_hints(schema_of(TaskSpec))
    assert tasks["weight"] == float | None and tasks["fields"] is Any  # an optional dict: see _schema_type


def test_adapter_and_balancer_overrides_are_typed_at_composition():
    """The chosen option's dataclass types its section: OmegaConf converts and rejects values as it composes."""
    cfg = compose_config(["adapter=smora", "adapter.alpha=8", "balancer=coba", "balancer.tau=2"])
    assert cfg.adapter.alpha == 8.0 and isinstance(cfg.adapter.alpha, float) and cfg.balancer.tau == 2.0
    err = reported(["adapter=smora", "adapter.top_k=many"])
    assert err.key == "adapter.top_k" and "could not be converted to Integer" in str(err)
    err = reported(["balancer=coba", "balancer.history=long"])
    assert err.key == "balancer.history" and "could not be converted to Integer" in str(err)


def test_target_modules_takes_a_name_or_a_list_and_nothing_else():
    assert compose_config(["adapter.target_modules=q_proj"]).adapter.target_modules == "q_proj"
    assert compose_config(["adapter.target_modules=[q_proj,v_proj]"]).adapter.target_modules == ["q_proj", "v_proj"]
    err = reported(["adapter.target_modules={q: 1}"])
    assert err.key == "adapter.target_modules" and "expected str" in str(err) and "expected a list" in str(err)


@dataclasses.dataclass
class WiderLoraConfig(lora.LoraConfig):
    name: str = "wider_test"
    extra_scale: float = 0.5  # a field no YAML mentions


def test_a_new_method_needs_only_its_registration_and_a_comment(tmp_path, regenerated_schemas):
    """A method registered at run time, with an option file holding only a comment, composes with its dataclass's
    defaults and types; a user's own option can take a registered method's schema through its defaults list."""
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "wider_test.yaml").write_text("# a wider LoRA\n")
    (tmp_path / "adapter" / "my_smora.yaml").write_text("defaults: [/schema/adapter/smora@_here_, _self_]\nrank: 8\n")
    search = f"hydra.searchpath=[file://{tmp_path}]"
    method = AdapterMethod(WiderLoraConfig, lora.inject, lora.save, lora.load)
    with ADAPTERS.registered("wider_test", method):
        regenerated_schemas()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = to_train_config(compose("train", overrides=[search, "adapter=wider_test", "adapter.rank=4"]))
        assert isinstance(cfg.adapter, WiderLoraConfig) and (cfg.adapter.extra_scale, cfg.adapter.rank) == (0.5, 4)
        err = reported([search, "adapter=wider_test", "adapter.extra_scale=big"])
        assert err.key == "adapter.extra_scale" and "could not be converted to Float" in str(err)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        mine = to_train_config(compose("train", overrides=[search, "adapter=my_smora"]))
    assert isinstance(mine.adapter, SMoRAConfig) and (mine.adapter.rank, mine.adapter.top_k) == (8, 4)
