"""The adapter and balancer registries are checked, and the test matrices follow them: a method registered at run
time is collected by `adapter_names` / `balancer_names` with no list edited, by what it can do, not by its name."""

from __future__ import annotations

import dataclasses

import pytest

from mtft.adapters import ADAPTERS, AdapterMethod, lora, molora, register_adapter
from mtft.adapters.moe import ExpertsRuntime, load_experts, save_experts
from mtft.balancers import BALANCERS, BalancerMethod, build_balancer, register_balancer
from mtft.balancers.base import Balancer, BalancerConfig
from mtft.balancers.dwa import DWABalancer, DWAConfig
from mtft.errors import ConfigError
from mtft.registry import Registry
from tests.helpers import adapter_names, balancer_names, compose_config, short_run_overrides


@dataclasses.dataclass
class FixedConfig(BalancerConfig):
    name: str = "fixed_test"


class FixedBalancer(Balancer):
    """Fixed weights, ignoring every loss: not adaptive."""

    def weights(self) -> dict[str, float]:
        return {t: float(i + 1) for i, t in enumerate(self.task_names)}


@dataclasses.dataclass
class WindowedConfig(DWAConfig):
    name: str = "dwa_test"


@dataclasses.dataclass
class LoraCopyConfig(lora.LoraConfig):
    name: str = "lora_test"


@dataclasses.dataclass
class MixtureCopyConfig(molora.MoLoRAConfig):
    name: str = "molora_test"


def _mixture_copy() -> AdapterMethod:
    """MoLoRA's pieces under a new name: its layers, its save/load, the experts runtime."""
    return AdapterMethod(
        MixtureCopyConfig,
        molora.inject,
        save_experts,
        lambda model, directory: load_experts(model, directory, config_class=MixtureCopyConfig, inject=molora.inject),
        lambda model, cfg: ExpertsRuntime(model),
    )


def test_methods_registered_at_run_time_join_the_matrices():
    with (
        ADAPTERS.registered("lora_test", AdapterMethod(LoraCopyConfig, lora.inject, lora.save, lora.load)),
        ADAPTERS.registered("molora_test", _mixture_copy()),
        BALANCERS.registered("fixed_test", BalancerMethod(FixedConfig, FixedBalancer)),
        BALANCERS.registered("dwa_test", BalancerMethod(WindowedConfig, DWABalancer)),
    ):
        assert {"lora_test", "molora_test"} <= set(adapter_names())
        assert "molora_test" in adapter_names("moe") and "lora_test" not in adapter_names("moe")
        assert {"fixed_test", "dwa_test"} <= set(balancer_names())
        assert "dwa_test" in balancer_names("adaptive") and "fixed_test" not in balancer_names("adaptive")
        assert short_run_overrides("dwa_test") == ["balancer.window=2"]  # by its config's fields, not its name
        assert short_run_overrides("fixed_test") == []
        assert build_balancer(FixedConfig(), ["a", "b"]).weights() == {"a": 1.0, "b": 2.0}  # found by its name
    # unregistered again on leaving the block: nothing leaks into other tests' matrices
    assert not {"lora_test", "molora_test"} & set(adapter_names())
    assert not {"fixed_test", "dwa_test"} & set(balancer_names())


def test_the_built_in_methods_are_classified_by_capability():
    """Pins the classifiers on known cases both ways, so neither can pass by collecting everything or nothing."""
    assert "molora" in adapter_names("moe") and "lora" not in adapter_names("moe") and "full" in adapter_names()
    assert "coba" in balancer_names("adaptive") and "static" not in balancer_names("adaptive")
    assert "static" in balancer_names()


def test_a_duplicate_name_is_refused():
    original = ADAPTERS["lora"]
    with pytest.raises(ConfigError, match=r"^adapter: 'lora' is already registered \(LoraConfig\)$"):
        register_adapter("lora", AdapterMethod(lora.LoraConfig, lora.inject, lora.save, lora.load))
    assert ADAPTERS["lora"] is original
    with (
        BALANCERS.registered("fixed_test", BalancerMethod(FixedConfig, FixedBalancer)),
        pytest.raises(ConfigError, match=r"^balancer: 'fixed_test' is already registered \(FixedConfig\)$"),
    ):
        register_balancer("fixed_test", BalancerMethod(FixedConfig, FixedBalancer))


def test_a_config_named_otherwise_is_refused():
    with pytest.raises(ConfigError, match=r"^balancer: 'fixed_other' is registered with config FixedConfig, which is"):
        register_balancer("fixed_other", BalancerMethod(FixedConfig, FixedBalancer))
    with pytest.raises(ConfigError, match=r"'molora2' is registered with config MixtureCopyConfig, which is named"):
        register_adapter("molora2", _mixture_copy())
    assert "fixed_other" not in BALANCERS and "molora2" not in ADAPTERS


def test_an_alias_finds_its_method_but_is_not_iterated():
    """`adapter=none`, full fine-tuning's old name: configs and saved runs that hold it still load."""
    assert ADAPTERS["none"] is ADAPTERS["full"] and "none" in ADAPTERS and "none" not in list(ADAPTERS)
    assert type(compose_config(["adapter=none"]).adapter) is ADAPTERS["full"].config
    with pytest.raises(ConfigError, match="^adapter: 'none' is already an alias of 'full'$"):
        ADAPTERS.alias("none", "lora")
    with pytest.raises(ConfigError, match="^adapter: alias 'old_name' names 'nosuch', which is not registered"):
        ADAPTERS.alias("old_name", "nosuch")


def test_every_refusal_is_a_config_error_naming_the_name_and_what_it_clashes_with():
    """On a scratch registry, every way to misuse it: each a ConfigError (the CLI reports it as one paragraph),
    none a bare KeyError or ValueError; a lookup that finds nothing is also a KeyError, as a Mapping's is."""
    registry: Registry = Registry("balancer")
    registry.register("fixed_test", BalancerMethod(FixedConfig, FixedBalancer))
    registry.alias("fixed_old", "fixed_test")
    refusals = {
        "balancer: 'fixed_old' is already an alias of 'fixed_test'": lambda: registry.register(
            "fixed_old", BalancerMethod(FixedConfig, FixedBalancer)
        ),
        "balancer: 'fixed_test' is already registered (FixedConfig)": lambda: registry.alias("fixed_test", "x"),
        "balancer: alias 'older' names 'fixed_old', itself an alias of 'fixed_test': name the entry": lambda: (
            registry.alias("older", "fixed_old")
        ),
        "balancer: 'nosuch' is not registered (registered: fixed_test)": lambda: registry["nosuch"],
        "balancer: 'fixed_old' is an alias of 'fixed_test', not an entry to unregister": lambda: registry.unregister(
            "fixed_old"
        ),
        "balancer: 'nosuch' is not registered, so it cannot be unregistered (registered: fixed_test)": lambda: (
            registry.unregister("nosuch")
        ),
    }
    for message, misuse in refusals.items():
        with pytest.raises(ConfigError) as refused:
            misuse()
        assert str(refused.value) == message and refused.value.key == "balancer"
    with pytest.raises(KeyError):
        registry["nosuch"]
    assert "nosuch" not in registry and registry.get("nosuch") is None and "fixed_old" in registry
    assert list(registry) == ["fixed_test"] and registry.aliases == {"fixed_old": "fixed_test"}  # nothing changed
