"""A checked name -> method mapping: the one way adapters and balancers are registered.

Each name is written three times (the registry key, the config dataclass's `name` default, the YAML file of the
config group) and the config's `name` is how a saved run finds its method again, so a registration that
disagrees with its config is refused here, at import, rather than found later as a run that cannot be reloaded.
Every refusal is a ConfigError naming the name and what it clashes with; a name that finds nothing is also a
KeyError, so the registry still reads as a Mapping (`name in REGISTRY`, `.get`).
Below every component: it imports only `mtft.errors`, so both registries (and tests) can use it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol, TypeVar

from mtft.errors import ConfigError


class Method(Protocol):
    config: type  # a dataclass with a `name` default


M = TypeVar("M", bound=Method)


class UnknownName(ConfigError, KeyError):
    """A name the registry does not hold: a ConfigError for the user, a KeyError for Mapping's `in` and `get`."""

    def __str__(self) -> str:
        return Exception.__str__(self)  # the message as written, not KeyError's repr of it


class Registry(Mapping[str, M]):
    """Read like a dict (`REGISTRY[name]`, `sorted(REGISTRY)`); written only through `register`."""

    def __init__(self, kind: str):
        self.kind = kind  # "adapter", "balancer": the config group, used in messages
        self._entries: dict[str, M] = {}
        self.aliases: dict[str, str] = {}  # an old name -> the name it stands for: found, never iterated

    def register(self, name: str, method: M) -> M:
        """Add `method` under `name`; refuse a name already taken or a config whose default `name` differs."""
        self._refuse_taken(name)
        config_name = method.config().name
        if config_name != name:
            raise ConfigError(
                self.kind,
                f"'{name}' is registered with config {method.config.__name__}, which is named '{config_name}': "
                f"they must agree (and match configs/{self.kind}/{name}.yaml)",
            )
        self._entries[name] = method
        return method

    def alias(self, old: str, name: str) -> None:
        """`old` finds entry `name` (a method renamed: configs and saved runs that hold the old name still load),
        but is not iterated, so no matrix runs a method twice."""
        self._refuse_taken(old)
        if name in self.aliases:
            raise ConfigError(
                self.kind, f"alias '{old}' names '{name}', itself an alias of '{self.aliases[name]}': name the entry"
            )
        if name not in self._entries:
            raise ConfigError(self.kind, f"alias '{old}' names '{name}', which is not registered ({self._listed()})")
        self.aliases[old] = name

    def unregister(self, name: str) -> M:
        """Remove and return an entry (for run-time registrations that must not outlive their use)."""
        if name in self.aliases:
            raise ConfigError(self.kind, f"'{name}' is an alias of '{self.aliases[name]}', not an entry to unregister")
        if name not in self._entries:
            raise UnknownName(
                self.kind, f"'{name}' is not registered, so it cannot be unregistered ({self._listed()})"
            )
        return self._entries.pop(name)

    def _refuse_taken(self, name: str) -> None:
        if name in self._entries:
            raise ConfigError(self.kind, f"'{name}' is already registered ({self._entries[name].config.__name__})")
        if name in self.aliases:
            raise ConfigError(self.kind, f"'{name}' is already an alias of '{self.aliases[name]}'")

    def _listed(self) -> str:
        return "registered: " + ", ".join(sorted(self._entries))

    @contextmanager
    def registered(self, name: str, method: M) -> Iterator[M]:
        """`method` registered under `name` for the duration of the block."""
        self.register(name, method)
        try:
            yield method
        finally:
            self.unregister(name)

    def __getitem__(self, name: str) -> M:
        try:
            return self._entries[self.aliases.get(name, name)]
        except KeyError:
            raise UnknownName(self.kind, f"'{name}' is not registered ({self._listed()})") from None

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


__all__ = ["Registry", "UnknownName", "import_methods"]
