"""Config composition, conversion and validation: every YAML composes; bad values name their key."""

from __future__ import annotations

import dataclasses

import pytest

from mtft.adapters.lora import LoraConfig
from mtft.balancers.static import StaticConfig
from mtft.cli.train import CONFIG_DIR
from mtft.config.sections import TrainerConfig
from mtft.config.train import build_train_config
from mtft.data.config import DataConfig
from mtft.errors import ConfigError
from tests.helpers import compose_config, compose_raw

GROUPS = ("model", "data", "adapter", "balancer", "trainer", "deepspeed", "logger")
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONFIG_DIR / g).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_yaml_composes_and_converts(group, option):
    overrides = [f"{group}={option}"]
    if (group, option) == ("model", "hf"):
        overrides.append("model.name_or_path=/some/local/dir")
    cfg = compose_config(overrides)
    section = getattr(cfg, group)
    assert dataclasses.is_dataclass(section)
    if group in ("adapter", "balancer", "logger"):
        assert section.name == option


def test_defaults_are_the_embedded_demo():
    cfg = compose_config()
    assert cfg.model.name_or_path is None
    assert [t.name for t in cfg.data.tasks] == ["add", "reverse", "sort", "sentiment"]
    assert all(t.path.endswith(f"mtft/data/demo/{t.name}.jsonl") for t in cfg.data.tasks)
    assert isinstance(cfg.adapter, LoraConfig) and cfg.adapter.target_modules == "all-linear"
    assert cfg.balancer.name == "data_balanced" and cfg.deepspeed.stage == 0 and cfg.logger.name == "none"
    assert cfg.model.trust_remote_code is False


def test_overrides_reach_typed_config():
    cfg = compose_config(
        ["adapter.rank=64", "trainer.max_steps=7", "balancer=static", "balancer.weights={add: 0.0, sort: 2}"]
    )
    assert cfg.adapter.rank == 64 and cfg.trainer.max_steps == 7
    assert isinstance(cfg.balancer, StaticConfig) and cfg.balancer.weights == {"add": 0.0, "sort": 2.0}


def test_user_data_file_listing_only_tasks(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.yaml").write_text("tasks:\n  - {name: qa, path: /x/qa.jsonl}\n")
    from hydra import compose, initialize_config_dir

    from mtft.config.hydra import to_train_config

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        raw = compose("train", overrides=["hydra.searchpath=[file://" + str(tmp_path) + "]", "data=mine"])
    # A key the user's file never mentions still takes an override without '+'.
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        raw2 = compose(
            "train", overrides=["hydra.searchpath=[file://" + str(tmp_path) + "]", "data=mine", "data.max_seq_len=77"]
        )
    cfg, cfg2 = to_train_config(raw), to_train_config(raw2)
    assert [t.name for t in cfg.data.tasks] == ["qa"]
    assert cfg.data.max_seq_len == DataConfig.__dataclass_fields__["max_seq_len"].default
    assert cfg.data.tasks[0].format == "auto" and cfg2.data.max_seq_len == 77


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        (["trainer.lr=-1"], "trainer.lr", "must be > 0"),
        (["trainer.max_steps=0"], "trainer.max_steps", "must be > 0"),
        (["trainer.lr_scheduler=zigzag"], "trainer.lr_scheduler", "must be one of"),
        (["adapter.rank=0"], "adapter.rank", "must be > 0"),
        (["balancer=static", "balancer.weights={nosuch: 1.0}"], "balancer.weights.nosuch", "no task is named"),
        (["balancer=static", "balancer.weights={add: -1.0}"], "balancer.weights.add", "must be >= 0"),
        (
            ["balancer=static", "balancer.weights={add: 0, reverse: 0, sort: 0, sentiment: 0}"],
            "balancer.weights",
            "nothing would train",
        ),
        (["data.mixing=weights"], "data.mixing", "needs a weight on every task"),
        (["data.mixing=bogus"], "data.mixing", "must be one of"),
        (["data.tasks=[{name: a, path: x}, {name: a, path: y}]"], "data.tasks", "duplicate task names: a"),
        (["data.tasks=[]"], "data.tasks", "at least one task"),
        (["model.attn_implementation=magic"], "model.attn_implementation", "must be one of"),
        (["deepspeed.stage=5"], "deepspeed.stage", "must be 0, 1, 2 or 3"),
        (["deepspeed=zero2", "deepspeed.offload_params=true"], "deepspeed.offload_params", "needs ZeRO stage 3"),
        (["deepspeed.offload_optimizer=true"], "deepspeed.offload_optimizer", "needs ZeRO stage 1, 2 or 3"),
        (["adapter.name=nosuch"], "adapter.name", "unknown adapter"),
    ],
)
def test_invalid_values_name_their_key(overrides, key, words):
    with pytest.raises(ConfigError) as info:
        compose_config(overrides)
    assert info.value.key == key
    assert words in str(info.value) and str(info.value).startswith(key)


def test_unknown_key_is_named():
    raw = compose_raw()
    raw["adapter"]["rnak"] = 8
    with pytest.raises(ConfigError, match=r"^adapter\.rnak: unknown key"):
        build_train_config(raw)


def test_wrong_type_is_named():
    raw = compose_raw()
    raw["adapter"]["rank"] = "big"
    with pytest.raises(ConfigError, match=r"^adapter\.rank: expected int"):
        build_train_config(raw)


def test_trainer_defaults_only_in_dataclass():
    """The trainer's defaults are the dataclass's: trainer=default adds none of its own."""
    cfg = compose_config()
    for f in dataclasses.fields(TrainerConfig):
        if f.name != "output_dir":
            assert getattr(cfg.trainer, f.name) == f.default, f.name


def test_a_pretrained_model_takes_a_pretrained_lms_learning_rate():
    """model=hf: LoRA at 2e-4, as peers default to; the tiny demo keeps its 3e-3; the command line wins."""
    assert compose_config(["model=hf", "model.name_or_path=/m"]).trainer.lr == 2e-4
    assert compose_config(["model=hf", "model.name_or_path=/m", "trainer.lr=1e-3"]).trainer.lr == 1e-3
    assert compose_config().trainer.lr == TrainerConfig.lr == 3e-3


def test_registries_match_their_config_groups():
    """Each name is written twice: the registry key and its config's default name; a YAML option of the group is
    optional (comments, or values other than the defaults), and names a registry entry. Selecting the option builds
    that entry's config under that name (so a YAML's own `name:` agrees too)."""
    from mtft.adapters import ADAPTERS
    from mtft.balancers import BALANCERS

    for group, registry in (("adapter", ADAPTERS), ("balancer", BALANCERS)):
        for name, entry in registry.items():
            assert entry.config().name == name
            built = getattr(compose_config([f"{group}={name}"]), group)
            assert type(built) is entry.config and built.name == name, (group, name)
        assert {p.stem for p in (CONFIG_DIR / group).glob("*.yaml")} <= set(registry)  # a YAML file is optional
