"""Imports point one way (docs/architecture.md, "Packages, top to bottom"): an `mtft` module may import only
modules in a layer below its own, so a component can be read, tested and replaced without the ones above it, and
no import cycle can form.

Every module under mtft/ is parsed with `ast` (nothing is imported, so a heavy or broken module cannot hide an
edge); every import of an `mtft.*` module, at module level or inside a function, is mapped to its unit (the first
name under `mtft`: a subpackage, or a single-file module) and that unit to its layer. Top to bottom:

    layer 0  cli              the entry points
    layer 1  bench            a CLI-level tool: runs training on composed configs, and servers
    layer 2  serve            mtft-serve's HTTP edge and batcher, over training's loading and generation
    layer 3  mtft             the package root: the public facade (`mtft.load_adapter`) over adapters
    layer 4  training         the loop; the one layer under the CLI that may import `config` (TrainConfig)
    layer 5  config           composes the components' config dataclasses into TrainConfig
    layer 6  eval             generation runs the model with its adapters on data: it needs adapters and data
    layer 7  adapters, balancers, data, logging, report    (none of these imports another)
    layer 8  models           base model, tokenizer, chat template, ModelConfig (a package: loading, gguf, ...)
    layer 9  distributed, plotting, registry   small modules: they import nothing from mtft but errors
    layer 10 errors           user-facing errors: the leaf every layer may raise from

A module may import its own unit freely (e.g. adapters.molora -> adapters.moe) and any unit in a lower layer;
two different units in the same layer may not import each other. `eval` sits above the component layer because
generation hands the prompts to the adapter's runtime (adapters) and reads TaskData (data); `report` sits in it
because it reads only a run's files. `config` is below training, bench and cli (which use TrainConfig) and above every
component, so no component can reach a registry or Hydra.

A unit missing from LAYERS fails the test: a new package must be placed on purpose.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mtft"

LAYERS: dict[str, int] = {
    "cli": 0,
    "bench": 1,
    "serve": 2,
    "mtft": 3,
    "training": 4,
    "config": 5,
    "eval": 6,
    "adapters": 7,
    "balancers": 7,
    "data": 7,
    "logging": 7,
    "report": 7,
    "models": 8,
    "distributed": 9,
    "plotting": 9,
    "registry": 9,  # its refusals are ConfigErrors
    "errors": 10,
}

# Known violations, each an exact (importing file, imported module) pair; none is left (MoR1E's intuition prior,
# the last, now takes prompts as token ids). An entry whose import has gone fails the test, so the list can only
# shrink.
ALLOWED: set[tuple[str, str]] = set()

# Hydra stops at the edge: only these units compose YAML or touch OmegaConf objects.
HYDRA_UNITS = {"cli", "config"}
HYDRA_MODULES = ("hydra", "omegaconf")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """`mtft.adapters.moe` -> adapters; `mtft.errors` -> errors; `mtft` -> mtft (the package root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def is_module(module: str) -> bool:
    relative = Path(*module.split(".")[1:]) if "." in module else Path()
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative / "__init__.py").is_file()


def imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, imported module, the import as written) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]  # a relative import counts from the module's package
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, f"import {alias.name}") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
            base = base if node.level else node.module
            written = f"from {'.' * node.level}{node.module or ''} import {', '.join(a.name for a in node.names)}"
            # `from mtft import adapters` imports the module mtft.adapters; `from mtft.x import name` imports mtft.x
            targets = [f"{base}.{a.name}" for a in node.names if is_module(f"{base}.{a.name}")] or [base]
            found += [(node.lineno, target, written) for target in targets]
    return found


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def layer_violations() -> tuple[list[str], set[tuple[str, str]]]:
    """Messages naming file, line and import for every import against the order; and the allowed ones seen."""
    problems, seen = [], set()
    for path in sources():
        rel = path.relative_to(ROOT).as_posix()
        source = unit(module_name(path))
        if source not in LAYERS:
            problems.append(f"{rel}: unit '{source}' has no layer in LAYERS")
            continue
        for line, target, written in imports(path):
            if target != "mtft" and not target.startswith("mtft."):
                continue
            dest = unit(target)
            if dest not in LAYERS:
                problems.append(f"{rel}:{line}: `{written}`: unit '{dest}' has no layer in LAYERS")
                continue
            if dest == source or LAYERS[dest] > LAYERS[source]:
                continue
            if (rel, target) in ALLOWED:
                seen.add((rel, target))
                continue
            where = "the same layer" if LAYERS[dest] == LAYERS[source] else "a layer above"
            problems.append(
                f"{rel}:{line}: `{written}`: {source} (layer {LAYERS[source]}) imports {dest}, "
                f"which is in {where} (layer {LAYERS[dest]})"
            )
    return problems, seen


def test_imports_point_down_the_layers():
    problems, _ = layer_violations()
    assert not problems, "imports against the layer order:\n" + "\n".join(problems)


def test_the_allow_list_holds_only_imports_that_still_exist():
    _, seen = layer_violations()
    gone = sorted(ALLOWED - seen)
    assert not gone, f"allowed imports no longer present (remove them from ALLOWED): {gone}"


def test_hydra_and_omegaconf_are_imported_only_under_config_and_cli():
    problems = []
    for path in sources():
        if unit(module_name(path)) in HYDRA_UNITS:
            continue
        for line, target, written in imports(path):
            if target.split(".")[0] in HYDRA_MODULES:
                problems.append(f"{path.relative_to(ROOT).as_posix()}:{line}: `{written}`")
    assert not problems, "Hydra/OmegaConf imported past the edge (only config/ and cli/ may):\n" + "\n".join(problems)


def test_the_checker_sees_each_kind_of_violation(tmp_path, monkeypatch):
    """The tests above pass only because the tree obeys the rules: on a small tree that breaks them, the same
    tests fail, naming file, line and import for an upward import, a same-layer one, one inside a function, a
    relative one, Hydra in a component, an unplaced unit, and an allowed import that has gone."""
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "ROOT", tmp_path)
    monkeypatch.setattr(this, "PACKAGE", tmp_path / "mtft")
    monkeypatch.setattr(this, "ALLOWED", {("mtft/models.py", "mtft.data.tokenize")})
    files = {
        "mtft/__init__.py": "",
        "mtft/errors.py": "",
        "mtft/models.py": "from mtft.data.tokenize import IGNORE\n",
        "mtft/data/__init__.py": "",
        "mtft/data/tokenize.py": "from mtft.models import ensure_chat_template\nfrom mtft.errors import check\n",
        "mtft/logging/__init__.py": "def f():\n    from mtft.report import plots\n",
        "mtft/report/__init__.py": "",
        "mtft/report/plots.py": "from .. import errors\nfrom ..config import sections\n",
        "mtft/config/__init__.py": "",
        "mtft/config/sections.py": "",
        "mtft/eval/__init__.py": "import omegaconf\nfrom mtft import newunit\n",
        "mtft/newunit.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)

    problems, seen = layer_violations()
    assert problems == [
        "mtft/eval/__init__.py:2: `from mtft import newunit`: unit 'newunit' has no layer in LAYERS",
        "mtft/logging/__init__.py:2: `from mtft.report import plots`: logging (layer 7) imports report, "
        "which is in the same layer (layer 7)",
        "mtft/newunit.py: unit 'newunit' has no layer in LAYERS",
        "mtft/report/plots.py:2: `from ..config import sections`: report (layer 7) imports config, "
        "which is in a layer above (layer 5)",
    ]
    assert seen == {("mtft/models.py", "mtft.data.tokenize")}  # allowed, so not among the problems
    with pytest.raises(AssertionError, match="mtft/eval/__init__.py:1: `import omegaconf`"):
        test_hydra_and_omegaconf_are_imported_only_under_config_and_cli()

    (tmp_path / "mtft/models.py").write_text("")
    with pytest.raises(AssertionError, match=r"no longer present.*mtft/models.py"):
        test_the_allow_list_holds_only_imports_that_still_exist()


# What generates from a model knows an adapter only by its registry and its runtime handle (`before_generate`):
# never a method's own module, so nothing there is specific to one method (e.g. MoR1E's prior).
ADAPTER_FACADE = {"mtft.adapters", "mtft.adapters.base"}
GENERATING = ["mtft/eval", "mtft/training/inference.py", "mtft/cli/generate.py"]


def test_generation_reaches_adapters_only_through_the_registry_and_the_runtime():
    files = [p for g in GENERATING for p in ((ROOT / g).rglob("*.py") if (ROOT / g).is_dir() else [ROOT / g])]
    found = [
        f"{path.relative_to(ROOT).as_posix()}:{line}: `{written}`"
        for path in files
        for line, target, written in imports(path)
        if unit(target) == "adapters" and target not in ADAPTER_FACADE
    ]
    assert len(files) > 3 and not found, found
