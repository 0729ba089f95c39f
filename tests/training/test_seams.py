"""The training loop knows no adapter's internals: it talks to one runtime handle (adapters/base.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import mtft.training
from tests.helpers import handle_attributes


def test_the_training_package_imports_no_mixture_of_experts_or_prior_internals():
    found = []
    for path in Path(mtft.training.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in ("mtft.adapters.moe", "mtft.adapters.intuition"):
                found.append(f"{path.name}:{node.lineno} from {node.module} import ...")
    assert not found, found


def test_the_loop_reaches_the_adapter_only_through_its_handle():
    folder = Path(mtft.training.__file__).parent
    calls = handle_attributes((folder / "loop.py").read_text(), "adapter")
    calls |= handle_attributes((folder / "components.py").read_text(), "adapter")
    # the step and validation use before_forward, aux_loss and after_step; checkpointing is given recomputation
    assert calls == {"prepare", "metrics", "recomputation"}


def test_the_loop_imports_fewer_than_30_names_from_mtft():
    """The recipe asks its components (checkpointer, evaluator, guard, ...) rather than holding their pieces."""
    tree = ast.parse((Path(mtft.training.__file__).parent / "loop.py").read_text())
    names = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mtft"
        for alias in node.names
    ]
    names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names if "mtft" in a.name]
    assert 10 < len(names) < 30, sorted(names)
