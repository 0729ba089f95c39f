"""mtft as a user gets it from a wheel, not from this checkout: a non-editable install must carry its Hydra configs
(mtft/configs/) and the bundled demo data, or `mtft-train` has nothing to compose. The wheel is built offline with
the venv's setuptools from a copy of the source (the shared checkout gets no build/ or egg-info), installed with
--no-deps into its own directory, and run from outside the repository with only that directory added to the path:
torch, hydra and the rest still come from the venv. The build itself is part of the check: setuptools prints no
deprecation warning (the license is an SPDX expression, not the table setuptools 77 deprecated), and the wheel's
metadata carries that expression and the LICENSE file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.helpers import LAUNCH_VARS

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GROUPS = ("model", "data", "adapter", "balancer", "trainer", "deepspeed", "logger")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The wheel of the current source tree, installed into a directory of its own."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    source.mkdir()
    shutil.copytree(REPO / "mtft", source / "mtft", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", root / "dist", source],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    assert "deprecat" not in (build.stdout + build.stderr).lower(), build.stderr[-3000:]
    (wheel,) = (root / "dist").glob("mtft-*.whl")
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    dist_info = "-".join(wheel.name.split("-")[:2]) + ".dist-info"  # mtft-VERSION.dist-info
    metadata = archive.read(f"{dist_info}/METADATA").decode().splitlines()
    assert "License-Expression: Apache-2.0" in metadata
    assert "License-File: LICENSE" in metadata
    assert archive.read(f"{dist_info}/licenses/LICENSE") == (REPO / "LICENSE").read_bytes()
    for group in GROUPS:
        for option in (REPO / "mtft" / "configs" / group).glob("*.yaml"):
            assert f"mtft/configs/{group}/{option.name}" in names
    assert "mtft/configs/train.yaml" in names
    assert {f"mtft/data/demo/{t}.jsonl" for t in ("add", "reverse", "sort", "sentiment")} <= names
    site = root / "site-packages"  # dill (datasets' fingerprints) pickles modules outside such a path by value
    subprocess.run([*pip, "install", "--no-deps", "-q", "--target", site, wheel], check=True)
    return site


def _run(site: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A command run from `cwd` with only the installed wheel added to the venv's path: no checkout on sys.path."""
    env = {k: v for k, v in os.environ.items() if k not in (*LAUNCH_VARS, "PYTHONPATH")}
    env |= {"PYTHONPATH": str(site), "WANDB_MODE": "offline"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_installed_wheel_trains_the_demo_from_outside_the_repository(site, tmp_path):
    imported = _run(site, [sys.executable, "-c", "import mtft; print(mtft.__file__)"], cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert Path(imported.stdout.strip()).is_relative_to(site)  # not the checkout, nor the venv's editable install

    out = tmp_path / "run"
    args = ["trainer.max_steps=3", "trainer.eval_generations=0", f"trainer.output_dir={out}"]
    proc = _run(site, [str(site / "bin" / "mtft-train"), *args], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["steps"] == 3
    tasks = yaml.safe_load((out / "config.yaml").read_text())["data"]["tasks"]
    assert [t["name"] for t in tasks] == ["add", "reverse", "sort", "sentiment"]
    assert all(Path(t["path"]).is_relative_to(site) for t in tasks)  # the demo data shipped in the wheel


def test_installed_wheel_takes_a_users_config_dir(site, tmp_path):
    """`--config-dir DIR` puts the user's groups and primary configs beside the packaged ones: the user's own
    primary config extends the packaged `train` and picks the user's `data=mine`, and an error in that file names the
    user's file, not a packaged path. Both runs stop before any step (a setup check, a composition error)."""
    user_dir = tmp_path / "mine"
    (user_dir / "data").mkdir(parents=True)
    user_file = user_dir / "data" / "mine.yaml"
    user_file.write_text("tasks:\n  - {name: add, path: '${mtft_demo:add.jsonl}'}\nmax_seq_len: 16\n")
    (user_dir / "mytrain.yaml").write_text("defaults:\n  - train\n  - override data: mine\n  - _self_\n")
    train = [str(site / "bin" / "mtft-train"), "--config-dir", str(user_dir), f"trainer.output_dir={tmp_path / 'run'}"]

    proc = _run(site, [*train, "--config-name", "mytrain"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("mtft-train: error: data.max_seq_len: 16")]
    assert line.endswith(f"(set in {user_file} or its defaults)")

    proc = _run(site, [*train, "data=nosuch"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (
        "mtft-train: error: data: no option 'nosuch'; the options are demo, demo_conflict, demo_overfit, mine"
        in proc.stderr
    )
