"""Balancer registry: `balancer=<name>` in the config selects one of these."""

from __future__ import annotations

from mtft.balancers.base import Balancer, BalancerConfig
from mtft.balancers.static import StaticBalancer, StaticConfig, UniformBalancer, UniformConfig

BALANCERS: dict[str, tuple[type[BalancerConfig], type[Balancer]]] = {
    "uniform": (UniformConfig, UniformBalancer),
    "static": (StaticConfig, StaticBalancer),
}


def build_balancer(cfg: BalancerConfig, task_names: list[str]) -> Balancer:
    return BALANCERS[cfg.name][1](cfg, task_names)


__all__ = ["BALANCERS", "Balancer", "BalancerConfig", "build_balancer"]
