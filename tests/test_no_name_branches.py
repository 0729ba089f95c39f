"""No code branches on an adapter's or a balancer's name, and no test, benchmark or script lists methods by hand:
what differs between methods is asked of the method itself (its capabilities, its runtime handle, its balancer
interface, its config's fields), and every method set comes from the registries, so a new method needs no edit
elsewhere. The experiment scripts (scripts/) are held to it too: which adapters they compare, and at what sizes, is
the registry's (`compared_adapters`)."""

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
# An experiment's design, fixed before its runs and behind published results, may choose its balancer arms by name:
# (file, the top-level name the list is in). Each must still be there (an entry whose list has gone fails the test),
# so the set can only shrink; adapters are never chosen by hand (the registry sizes them).
EXPERIMENT_DESIGNS = {
    ("scripts/experiments/real.py", "BALANCERS"): "the balancers on LoRA: uniform, CoBa, FAMO, data_balanced",
    ("scripts/experiments/mixing.py", "mixing_arms"): "experiment 1's arms, committed before its runs",
}


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
    """The Python files under these folders, none in a hidden folder (e.g. scripts' peer venv, .venv-trl)."""
    paths = (path for folder in folders for path in (ROOT / folder).rglob("*.py"))
    return sorted(path for path in paths if not any(part.startswith(".") for part in path.relative_to(ROOT).parts))


def _top_level_name(statement: ast.stmt) -> str | None:
    """The name a module-level statement defines: a function's, a class's, or an assignment's single target."""
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return statement.name
    targets = statement.targets if isinstance(statement, ast.Assign) else [getattr(statement, "target", None)]
    return targets[0].id if len(targets) == 1 and isinstance(targets[0], ast.Name) else None


def _hand_written_lists(*folders: str) -> tuple[list[str], set[tuple[str, str]]]:
    """Where a list, tuple, set or dict holds two or more method names, but for EXPERIMENT_DESIGNS; and those seen."""
    found, designs = [], set()
    for path in _python_files(*folders):
        for statement in ast.parse(path.read_text()).body:
            design = (path.relative_to(ROOT).as_posix(), _top_level_name(statement))
            for node in ast.walk(statement):
                if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)) and len(_method_names_in(node)) >= 2:
                    if design in EXPERIMENT_DESIGNS:
                        designs.add(design)
                    else:
                        found.append(_where(path, node))
    return found, designs


def test_no_comparison_or_membership_test_against_a_method_name_in_mtft_or_scripts():
    """`x == "lora"`, `name != "none"`, `adapter in ("lora", "plain")`: anywhere in mtft/ or scripts/, whatever `x`
    is."""
    found = []
    for path in _python_files("mtft", "scripts"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(_method_names_in(side) for side in sides) and not any(map(_other_vocabulary, sides)):
                    found.append(_where(path, node))
    assert not found, f"branches on a method's name: {found}"


def test_no_hand_written_method_list_in_tests_benchmarks_or_scripts():
    """A list, tuple, set or dict of two or more method names: a method set that a new method would not join."""
    found, _ = _hand_written_lists("tests", "mtft/bench", "scripts")
    assert not found, f"method lists written by hand: {found}"


def test_the_experiment_designs_allowed_their_balancer_lists_still_have_them():
    _, designs = _hand_written_lists("scripts")
    gone = sorted(set(EXPERIMENT_DESIGNS) - designs)
    assert not gone, f"no longer a hand-written method list (remove them from EXPERIMENT_DESIGNS): {gone}"


def test_the_checks_see_what_they_look_for():
    assert _method_names_in(ast.parse('("lora", "plain")', mode="eval").body) == ["lora"]
    assigned, defined = ast.parse('BALANCERS = ["coba", "famo"]\ndef arms():\n    return {"uniform": 1}').body
    assert (_top_level_name(assigned), _top_level_name(defined)) == ("BALANCERS", "arms")
    assert len(_method_names_in(assigned.value)) == 2
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
