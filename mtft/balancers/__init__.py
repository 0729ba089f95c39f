"""Balancer registry: `balancer=<name>` in the config selects one of these."""

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


class BalancerMethod(NamedTuple):
    config: type[BalancerConfig]
    balancer: type[Balancer]


BALANCERS: dict[str, BalancerMethod] = {
    "uniform": BalancerMethod(UniformConfig, UniformBalancer),
    "data_balanced": BalancerMethod(DataBalancedConfig, DataBalancedBalancer),
    "static": BalancerMethod(StaticConfig, StaticBalancer),
    "coba": BalancerMethod(CoBaConfig, CoBaBalancer),
    "dwa": BalancerMethod(DWAConfig, DWABalancer),
    "famo": BalancerMethod(FAMOConfig, FAMOBalancer),
    "uncertainty": BalancerMethod(UncertaintyConfig, UncertaintyBalancer),
}


def build_balancer(cfg: BalancerConfig, task_names: list[str]) -> Balancer:
    return BALANCERS[cfg.name].balancer(cfg, task_names)


__all__ = ["BALANCERS", "Balancer", "BalancerConfig", "build_balancer"]
