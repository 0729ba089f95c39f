"""No code branches on an adapter's or a balancer's name: what differs between methods is asked of the method
itself (its capabilities, its runtime handle, its balancer interface), so a new method needs no edit elsewhere."""

from __future__ import annotations

import ast
from pathlib import Path

import mtft
from mtft.adapters import ADAPTERS
from mtft.balancers import BALANCERS

METHOD_NAMES = set(ADAPTERS) | set(BALANCERS)


def _is_a_name(node: ast.AST) -> bool:
    """`x.name` or `x["name"]`: how a method's name is read from its config."""
    if isinstance(node, ast.Attribute):
        return node.attr == "name"
    return isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value == "name"


def _method_names_in(node: ast.AST) -> bool:
    values = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return any(isinstance(v, ast.Constant) and v.value in METHOD_NAMES for v in values)


def test_no_comparison_of_a_config_name_with_a_method_name():
    root = Path(mtft.__file__).parent
    found = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(_is_a_name(side) for side in sides) and any(_method_names_in(side) for side in sides):
                    found.append(f"{path.relative_to(root.parent).as_posix()}:{node.lineno}")
    assert not found, f"branches on a method's name: {found}"


def test_capabilities_say_what_the_names_used_to():
    assert {n for n, m in ADAPTERS.items() if m.config.can_merge} == {"lora", "none"}
    assert {n for n, m in ADAPTERS.items() if m.config.is_full_model} == {"none"}
