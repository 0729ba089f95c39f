"""mtft-eval, mtft-generate, mtft-export and mtft-serve refuse an argument without `=` by name, before anything
loads, instead of dropping it."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("command", ["eval", "generate", "export", "serve"])
def test_an_argument_without_equals_is_an_error_naming_it(command, capsys):
    main = importlib.import_module(f"mtft.cli.{command}").main
    with pytest.raises(SystemExit) as exited:
        main(["checkpoint=runs/x", "runs/typo"])
    assert exited.value.code == 2
    assert f"mtft-{command}: error: 'runs/typo' is not key=value; usage: " in capsys.readouterr().err
