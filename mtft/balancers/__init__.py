"""Balancer registry: `balancer=<name>` in the config selects one of these. Each balancer's module registers itself
(`register_balancer`, in balancers/base.py) and this package imports every module it holds, so a new balancer is
one file. Checked: a unique name, equal to its config's `name`."""

from __future__ import annotations

from mtft.balancers.base import BALANCERS, Balancer, BalancerConfig, BalancerMethod, is_adaptive, register_balancer
from mtft.registry import import_methods

import_methods(__name__, __path__)


def build_balancer(cfg: BalancerConfig, task_names: list[str]) -> Balancer:
    return BALANCERS[cfg.name].balancer(cfg, task_names)


__all__ = [
    "BALANCERS",
    "Balancer",
    "BalancerConfig",
    "BalancerMethod",
    "build_balancer",
    "is_adaptive",
    "register_balancer",
]
