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
    with pytest.raises(ValueError, match=r"adapter 'lora' is already registered"):
        register_adapter("lora", AdapterMethod(lora.LoraConfig, lora.inject, lora.save, lora.load))
    assert ADAPTERS["lora"] is original
    with (
        BALANCERS.registered("fixed_test", BalancerMethod(FixedConfig, FixedBalancer)),
        pytest.raises(ValueError, match=r"balancer 'fixed_test' is already registered"),
    ):
        register_balancer("fixed_test", BalancerMethod(FixedConfig, FixedBalancer))


def test_a_config_named_otherwise_is_refused():
    with pytest.raises(ValueError, match=r"registered as 'fixed_other'.*FixedConfig is named 'fixed_test'"):
        register_balancer("fixed_other", BalancerMethod(FixedConfig, FixedBalancer))
    with pytest.raises(ValueError, match=r"registered as 'molora2'.*MixtureCopyConfig is named 'molora_test'"):
        register_adapter("molora2", _mixture_copy())
    assert "fixed_other" not in BALANCERS and "molora2" not in ADAPTERS


def test_an_alias_finds_its_method_but_is_not_iterated():
    """`adapter=none`, full fine-tuning's old name: configs and saved runs that hold it still load."""
    assert ADAPTERS["none"] is ADAPTERS["full"] and "none" in ADAPTERS and "none" not in list(ADAPTERS)
    assert type(compose_config(["adapter=none"]).adapter) is ADAPTERS["full"].config
    with pytest.raises(ValueError, match="'none' is already registered"):
        ADAPTERS.alias("none", "lora")
    with pytest.raises(ValueError, match="names 'nosuch', which is not registered"):
        ADAPTERS.alias("old_name", "nosuch")
