"""Shared fixtures: a one-process DeepSpeed group and small task files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtft.data import synthetic


@pytest.fixture(scope="session")
def dist_group():
    """One process group for every in-process engine test (the CLI fills the same variables itself)."""
    from mtft.training.engine import init_distributed

    return init_distributed()


@pytest.fixture(scope="session")
def small_tasks(tmp_path_factory) -> dict[str, Path]:
    """Two demo tasks, 64 samples each: enough to train a few steps in a second."""
    root = tmp_path_factory.mktemp("small_tasks")
    paths = {}
    for name in ("add", "sentiment"):
        paths[name] = root / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(s) + "\n" for s in synthetic.generate(name)[:64]))
    return paths


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Tests tokenize into their own cache, never the user's ~/.cache/mtft."""
    import os

    os.environ["MTFT_CACHE_DIR"] = str(tmp_path_factory.mktemp("mtft_cache"))
