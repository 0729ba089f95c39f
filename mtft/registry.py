"""A checked name -> method mapping: the one way adapters and balancers are registered.

Each name is written three times (the registry key, the config dataclass's `name` default, the YAML file of the
config group) and the config's `name` is how a saved run finds its method again, so a registration that
disagrees with its config is refused here, at import, rather than found later as a run that cannot be reloaded.
A leaf module: it imports nothing from mtft, so both registries (and tests) can use it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol, TypeVar


class Method(Protocol):
    config: type  # a dataclass with a `name` default


M = TypeVar("M", bound=Method)


class Registry(Mapping[str, M]):
    """Read like a dict (`REGISTRY[name]`, `sorted(REGISTRY)`); written only through `register`."""

    def __init__(self, kind: str):
        self.kind = kind  # "adapter", "balancer": the config group, used in messages
        self._entries: dict[str, M] = {}
        self.aliases: dict[str, str] = {}  # an old name -> the name it stands for: found, never iterated

    def register(self, name: str, method: M) -> M:
        """Add `method` under `name`; refuse a name already taken or a config whose default `name` differs."""
        if name in self._entries or name in self.aliases:
            raise ValueError(f"{self.kind} '{name}' is already registered ({self._entries[name].config.__name__})")
        config_name = method.config().name
        if config_name != name:
            raise ValueError(
                f"{self.kind} registered as '{name}' but its config {method.config.__name__} is named "
                f"'{config_name}': they must agree (and match configs/{self.kind}/{name}.yaml)"
            )
        self._entries[name] = method
        return method

    def alias(self, old: str, name: str) -> None:
        """`old` finds entry `name` (a method renamed: configs and saved runs that hold the old name still load),
        but is not iterated, so no matrix runs a method twice."""
        if old in self._entries or old in self.aliases:
            raise ValueError(f"{self.kind} '{old}' is already registered")
        if name not in self._entries:
            raise ValueError(f"{self.kind} alias '{old}' names '{name}', which is not registered")
        self.aliases[old] = name

    def unregister(self, name: str) -> M:
        """Remove and return an entry (for run-time registrations that must not outlive their use)."""
        return self._entries.pop(name)

    @contextmanager
    def registered(self, name: str, method: M) -> Iterator[M]:
        """`method` registered under `name` for the duration of the block."""
        self.register(name, method)
        try:
            yield method
        finally:
            self.unregister(name)

    def __getitem__(self, name: str) -> M:
        return self._entries[self.aliases.get(name, name)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._entries)})"


def import_methods(package: str, path: list[str]) -> None:
    """Import every module of a method package (`__name__`, `__path__`), in name order: a method's module registers
    itself when imported, so a new method is its file alone, with no list of modules to edit."""
    for module in sorted(pkgutil.iter_modules(path), key=lambda info: info.name):
        importlib.import_module(f"{package}.{module.name}")


__all__ = ["Registry", "import_methods"]
