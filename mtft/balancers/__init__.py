"""Balancer registry: `balancer=<name>` in the config selects one of these; `register_balancer` adds one
(checked: unique name, equal to its config's `name` and, by a test, to a YAML file in configs/balancer/)."""

from __future__ import annotations

from typing import NamedTuple

from mtft.balancers.base import Balancer, BalancerConfig
from mtft.balancers.coba import CoBaBalancer, CoBaConfig
from mtft.balancers.dwa import DWABalancer, DWAConfig
from mtft.balancers.famo import FAMOBalancer, FAMOConfig
from mtft.balancers.static import (
    DataBalancedBalancer,
    DataBalancedConfig,
    StaticBalancer,
    StaticConfig,
    UniformBalancer,
    UniformConfig,
)
from mtft.balancers.uncertainty import UncertaintyBalancer, UncertaintyConfig
from mtft.registry import Registry


class BalancerMethod(NamedTuple):
    config: type[BalancerConfig]
    balancer: type[Balancer]


BALANCERS: Registry[BalancerMethod] = Registry("balancer")
register_balancer = BALANCERS.register

register_balancer("uniform", BalancerMethod(UniformConfig, UniformBalancer))
register_balancer("data_balanced", BalancerMethod(DataBalancedConfig, DataBalancedBalancer))
register_balancer("static", BalancerMethod(StaticConfig, StaticBalancer))
register_balancer("coba", BalancerMethod(CoBaConfig, CoBaBalancer))
register_balancer("dwa", BalancerMethod(DWAConfig, DWABalancer))
register_balancer("famo", BalancerMethod(FAMOConfig, FAMOBalancer))
register_balancer("uncertainty", BalancerMethod(UncertaintyConfig, UncertaintyBalancer))


def build_balancer(cfg: BalancerConfig, task_names: list[str]) -> Balancer:
    return BALANCERS[cfg.name].balancer(cfg, task_names)


__all__ = ["BALANCERS", "Balancer", "BalancerConfig", "BalancerMethod", "build_balancer", "register_balancer"]
