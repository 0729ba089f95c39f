"""User-facing errors: raised for bad config or bad data, reported by the CLI as one paragraph, never a traceback.

A leaf module (it imports nothing from mtft), so every layer can raise them and the config dataclasses that live
beside their components can validate with `check` without importing `mtft.config`."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in what the user gave us. The message must name where (key, or file and line) and what."""


class ConfigError(UserError):
    """An invalid config value. `key` is the dotted path once the converter has prefixed it."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)

    def under(self, prefix: str) -> ConfigError:
        return ConfigError(f"{prefix}.{self.key}" if self.key else prefix, self.problem)


def unknown_key(key: str, valid: Iterable[str]) -> ConfigError:
    """`key` (dotted) names no field: suggest the closest sibling (a typo is the usual cause), else list them all."""
    prefix, _, name = key.rpartition(".")
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    if close:
        return ConfigError(key, f"unknown key; did you mean {prefix + '.' if prefix else ''}{close[0]}?")
    return ConfigError(key, f"unknown key; the keys here are {', '.join(valid)}")


class DataError(UserError):
    """Bad input data: the message names the file, the line (or row, for columnar files) and the field.

    `reason` is a short slug under which a lenient run (data.bad_records=drop) counts the record instead.
    """

    def __init__(
        self, path: str, line: int | None, field: str | None, problem: str, reason: str = "invalid", unit: str = "line"
    ):
        self.path, self.line, self.field, self.problem, self.reason, self.unit = (
            path,
            line,
            field,
            problem,
            reason,
            unit,
        )
        where = str(path) if line is None else (f"{path}:{line}" if unit == "line" else f"{path} {unit} {line}")
        what = f" field '{field}'" if field else ""
        super().__init__(f"{where}:{what} {problem}")


def check(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(key, problem)


def check_choice(value: str, key: str, choices: tuple[str, ...]) -> None:
    check(value in choices, key, f"must be one of {', '.join(choices)}; got '{value}'")
