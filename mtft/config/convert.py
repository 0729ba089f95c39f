"""Plain nested dicts (what Hydra composed) to typed dataclasses, with errors that name the dotted key."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar, Union

from mtft.errors import ConfigError, unknown_key

T = TypeVar("T")


def from_dict(cls: type[T], data: Any, key: str = "") -> T:
    """Build dataclass `cls` from `data`, recursively. Unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(key, f"expected a mapping of {cls.__name__} fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise unknown_key(_join(key, str(unknown[0])), fields)
    kwargs = {name: _coerce(hints[name], value, _join(key, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise err.under(key) if key else err from None


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as err:
                errors.append(err.problem)
        raise ConfigError(key, " or ".join(errors))
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):  # already built, e.g. an adapter config chosen from a registry
            return value
        return from_dict(hint, value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r}")
        return [_coerce(args[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, _join(key, str(k))) for k, v in value.items()}
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise ConfigError(key, f"expected {hint.__name__}, got {value!r}")
    return value


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
