"""The `key=value` command lines of mtft-eval, mtft-generate, mtft-export and mtft-serve: an argument without `=`
is an error naming it, never silently dropped (a typo such as `checkpoint runs/x` would otherwise run something
else than asked)."""

from __future__ import annotations

from mtft.errors import ConfigError


def key_values(argv: list[str], usage: str) -> dict[str, str]:
    loose = [arg for arg in argv if "=" not in arg]
    if loose:
        raise ConfigError("", f"'{loose[0]}' is not key=value; usage: {usage}")
    return dict(arg.split("=", 1) for arg in argv)
