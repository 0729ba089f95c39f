"""Two data-parallel processes under torchrun (gloo, CPU): CoBa's weights are identical on both ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import LAUNCH_VARS, small_data_overrides

pytestmark = pytest.mark.integration


def test_coba_weights_are_identical_on_both_ranks(small_tasks, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    torchrun = Path(sys.executable).parent / "torchrun"
    overrides = [
        *small_data_overrides(small_tasks),
        "balancer=coba",
        "balancer.warmup_steps=2",
        "balancer.update_interval=1",
        "trainer.max_steps=8",
        "trainer.save_steps=4",
        "trainer.micro_batch_size=4",
        f"trainer.output_dir={tmp_path}",
    ]
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "mtft.cli.train", *overrides]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for step in (4, 8):
        states = [
            torch.load(tmp_path / f"checkpoint-{step}" / f"rank_state_{r}.pt", weights_only=False) for r in (0, 1)
        ]
        assert states[0]["weights"] == states[1]["weights"]
        assert states[0]["batches"]["sampler"]["cursors"] == states[1]["batches"]["sampler"]["cursors"]
    assert set(states[0]["weights"].values()) != {1.0}  # CoBa really moved the weights
    # one record (the last step; logging_steps is 20), written once: only rank 0 writes metrics.jsonl
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1
