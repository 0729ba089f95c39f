"""OmegaConf schemas generated from the config dataclasses, so each default is written once: in the dataclass.

Hydra types and fills a section from a structured config. The dataclasses beside each component cannot always be
that config themselves: OmegaConf refuses some annotations (a `str | list[str]` union such as
`LowRankConfig.target_modules`, a `Literal`), and it would see fields that are not constructor arguments. So
`schema_of(cls)` builds a twin dataclass with the same fields, names and defaults, each annotation kept where
OmegaConf can check it and widened to `Any` where it cannot. A widened field is still checked, once, when the
composed config is converted to `cls` (`config/convert.py` tries each member of a union and names the key).

A field added to a config dataclass, with its default, is therefore in the composed config, typed and
overridable, with no YAML edit.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import pathlib
import types
import typing
from typing import Any, Union

from omegaconf import MISSING

_SCALARS = (int, float, bool, str, bytes, pathlib.Path)


@functools.cache
def schema_of(cls: type) -> type:
    """A dataclass OmegaConf accepts as a structured config, with `cls`'s constructor fields and defaults."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        hint = _schema_type(hints[f.name])
        if isinstance(f.default, (*_SCALARS, enum.Enum, type(None))):
            spec = dataclasses.field(default=f.default)
        elif f.default is not dataclasses.MISSING:  # a frozen dataclass or tuple: mutable once it is a twin or list
            spec = dataclasses.field(default_factory=functools.partial(_schema_value, f.default))
        elif dataclasses.is_dataclass(f.default_factory):  # field(default_factory=TinyModelConfig)
            spec = dataclasses.field(default_factory=schema_of(f.default_factory))
        elif f.default_factory is not dataclasses.MISSING:
            factory = f.default_factory
            spec = dataclasses.field(default_factory=lambda factory=factory: _schema_value(factory()))
        else:
            spec = dataclasses.field(default=MISSING)
        fields.append((f.name, hint, spec))
    schema = dataclasses.make_dataclass(cls.__name__, fields)
    schema.__module__ = __name__
    schema.__doc__ = f"The structured-config twin of {cls.__module__}.{cls.__qualname__} (mtft.config.schemas)."
    return schema


def _schema_type(hint: Any) -> Any:
    """`hint` where OmegaConf 2.3 can check it; otherwise the nearest annotation it can (at worst `Any`)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if len(members) != 1:  # e.g. str | list[str]: OmegaConf has no unions
            return Any
        inner = _schema_type(members[0])
        if len(members) == len(args):
            return inner
        # OmegaConf 2.3 cannot merge an override into a None-valued dict node (`balancer.weights={add: 2}` fails
        # in OmegaConf.update), so an optional dict is left untyped here and typed on conversion
        return Any if typing.get_origin(inner) is dict else inner | None
    if origin is list:
        return list[_schema_type(args[0])] if args else list[Any]
    if origin is dict:
        key, value = args or (str, Any)
        return dict[key, _schema_type(value)] if key in (str, int, float, bool) else Any
    if dataclasses.is_dataclass(hint):
        return schema_of(hint)
    if hint is Any or hint in _SCALARS or (isinstance(hint, type) and issubclass(hint, enum.Enum)):
        return hint
    return Any


def _schema_value(value: Any) -> Any:
    """A default as its schema's value: a nested dataclass becomes its twin, recursively; a fresh copy each call."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kwargs = {f.name: _schema_value(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return schema_of(type(value))(**kwargs)
    if isinstance(value, (list, tuple)):
        return [_schema_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _schema_value(v) for k, v in value.items()}
    return value
