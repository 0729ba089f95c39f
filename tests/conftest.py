"""Shared fixtures: a one-process DeepSpeed group and small task files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# `make test` runs the suite on every core with pytest-xdist, one worker process per core. Each worker, and each
# process a test starts, then uses one thread: several multi-threaded workers on the same cores spin in OpenMP
# barriers and run many times slower than one thread each.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

from mtft.data import synthetic  # noqa: E402


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
