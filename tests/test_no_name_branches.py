"""No code branches on an adapter's or a balancer's name, and no test or benchmark lists methods by hand: what
differs between methods is asked of the method itself (its capabilities, its runtime handle, its balancer
interface), and every method set comes from the registries, so a new method needs no edit elsewhere."""

from __future__ import annotations

import ast
from pathlib import Path

import mtft
from mtft.adapters import ADAPTERS
from mtft.balancers import BALANCERS
from tests.helpers import adapter_names

METHOD_NAMES = set(ADAPTERS) | set(BALANCERS)
ROOT = Path(mtft.__file__).resolve().parents[1]
# config fields whose values share a word with a method's name but name something else
OTHER_VOCABULARIES = {"mixing": "data.mixing: natural | uniform | temperature | weights"}


def _method_names_in(node: ast.AST) -> list[str]:
    """The method names written as string constants in `node`, or in the list, tuple, set or dict keys it is."""
    if isinstance(node, ast.Dict):
        values = node.keys
    elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        values = node.elts
    else:
        values = [node]
    return [v.value for v in values if isinstance(v, ast.Constant) and v.value in METHOD_NAMES]


def _other_vocabulary(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr in OTHER_VOCABULARIES


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT).as_posix()}:{node.lineno}"


def _python_files(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def test_no_comparison_or_membership_test_against_a_method_name_in_mtft():
    """`x == "lora"`, `name != "none"`, `adapter in ("lora", "plain")`: anywhere in mtft/, whatever `x` is."""
    found = []
    for path in _python_files("mtft"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(_method_names_in(side) for side in sides) and not any(map(_other_vocabulary, sides)):
                    found.append(_where(path, node))
    assert not found, f"branches on a method's name: {found}"


def test_no_hand_written_method_list_in_tests_or_benchmarks():
    """A list, tuple, set or dict of two or more method names: a method set that a new method would not join."""
    found = []
    for path in _python_files("tests", "mtft/bench"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)) and len(_method_names_in(node)) >= 2:
                found.append(_where(path, node))
    assert not found, f"method lists written by hand: {found}"


def test_the_checks_see_what_they_look_for():
    assert _method_names_in(ast.parse('("lora", "plain")', mode="eval").body) == ["lora"]
    branch = ast.parse('adapter not in ("lora", "plain")', mode="eval").body
    assert any(_method_names_in(side) for side in [branch.left, *branch.comparators])
    assert _other_vocabulary(ast.parse('cfg.mixing == "uniform"', mode="eval").body.left)


def test_capabilities_say_what_the_names_used_to():
    """Pinned both ways on the built-in methods, so a capability cannot pass by holding for all or none."""
    assert ADAPTERS["lora"].config.can_merge and ADAPTERS["none"].config.can_merge
    assert ADAPTERS["none"].config.is_full_model and not ADAPTERS["lora"].config.is_full_model
    assert ADAPTERS["lora"].config.is_baseline
    for mixture in adapter_names("moe"):
        config = ADAPTERS[mixture].config
        assert not (config.can_merge or config.is_full_model or config.is_baseline), mixture
