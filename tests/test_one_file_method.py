"""A new method is one file: in a scratch copy of the project, `balancers/dwa.py` and `adapters/molora.py` are copied
under new names with the names inside changed, CONTRIBUTING.md's two worked examples are written where they say,
and no other file is touched. `mtft-train` then trains with the copies and with the examples, and the test matrices
collect and pass all four."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import LAUNCH_VARS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
# every test file with a matrix collected from the registries (tests/helpers.py's adapter_names / balancer_names)
MATRICES = [
    "tests/adapters/test_experts.py",
    "tests/adapters/test_padding.py",
    "tests/adapters/test_save_load.py",
    "tests/balancers/test_loss_only.py",
    "tests/training/test_gradient_checkpointing.py",
    "tests/training/checkpoint/test_files.py",
]


NEW_METHODS = ["molora_copy", "dwa_copy", "dense_molora", "inverse"]


def contributing_examples() -> dict[str, str]:
    """CONTRIBUTING.md's worked examples: the file each names (`1. **`mtft/.../x.py`**`) and the code under it."""
    text = (ROOT / "CONTRIBUTING.md").read_text()
    found = re.findall(r"\*\*`(mtft/\w+/\w+\.py)`\*\*[^\n]*\n\n( +)```python\n(.*?)\n +```", text, re.DOTALL)
    return {path: textwrap.dedent(code) + "\n" for path, _, code in found}


def copy_method(folder: Path, name: str, class_prefix: str) -> None:
    """`folder/<name>.py` as `<name>_copy.py`: its registered name and its class-name prefix changed, nothing else."""
    text = re.sub(rf'"{name}"', f'"{name}_copy"', (folder / f"{name}.py").read_text())
    (folder / f"{name}_copy.py").write_text(re.sub(rf"\b{class_prefix}(?=[A-Z_])", f"{class_prefix}Copy", text))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scratch_clone")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for folder in ("mtft", "tests"):
        shutil.copytree(ROOT / folder, root / folder, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    copy_method(root / "mtft/balancers", "dwa", "DWA")
    copy_method(root / "mtft/adapters", "molora", "MoLoRA")
    for path, code in contributing_examples().items():
        (root / path).write_text(code)
    return root


def run(scratch: Path, *args: str, timeout: int) -> subprocess.CompletedProcess:
    """A process that imports mtft from the scratch copy, not from this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env |= {"PYTHONPATH": str(scratch), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_contributing_has_the_two_examples():
    assert set(contributing_examples()) == {"mtft/balancers/inverse.py", "mtft/adapters/dense_molora.py"}


def test_the_copies_change_only_names(scratch):
    copy = (scratch / "mtft/adapters/molora_copy.py").read_text()
    assert 'register_adapter("molora_copy"' in copy and "class MoLoRACopyConfig" in copy and '"molora"' not in copy
    assert 'register_balancer("dwa_copy"' in (scratch / "mtft/balancers/dwa_copy.py").read_text()


@pytest.mark.parametrize(("adapter", "balancer"), [("molora_copy", "dwa_copy"), ("dense_molora", "inverse")])
def test_mtft_train_trains_with_the_new_methods(scratch, tmp_path, adapter, balancer):
    out = tmp_path / "run"
    args = [f"balancer={balancer}", f"adapter={adapter}", "trainer.max_steps=3"]
    proc = run(scratch, "-m", "mtft.cli.train", *args, f"trainer.output_dir={out}", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = (out / "config.yaml").read_text()
    assert f"name: {adapter}" in config and f"name: {balancer}" in config
    assert (out / "checkpoint-3" / "adapter" / "mtft_adapter.json").read_text().count(f'"{adapter}"') == 1


def test_the_matrices_collect_and_pass_both_copies(scratch):
    selected = " or ".join(NEW_METHODS)
    proc = run(scratch, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", selected, *MATRICES, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:]
    passed = int(re.search(r"(\d+) passed", proc.stdout).group(1))
    collected = run(scratch, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider", *MATRICES, timeout=300)
    ids = [line for line in collected.stdout.splitlines() if "::" in line]
    assert passed == sum(any(name in i for name in NEW_METHODS) for i in ids) > 0
    for name in NEW_METHODS:
        assert any(name in i for i in ids), f"no matrix collected {name}"
