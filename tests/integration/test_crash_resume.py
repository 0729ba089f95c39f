"""A process killed (SIGKILL) in the middle of writing a checkpoint: resume=auto ignores the half-written one,
takes the previous one, and finishes exactly as an unbroken run: the same losses, task weights (or, with
balancer.apply_to=sampling, the same mixes and samples drawn), router loads and SMoRA balancing biases, and a
bitwise-identical adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import LAUNCH_VARS, computed, small_data_overrides

pytestmark = pytest.mark.integration


def _run(command: list[str], **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS} | env_extra
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def _records(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.parametrize(
    ("apply_to", "moving", "static"),
    [("loss", "task/add/weight", 1.0), ("sampling", "task/add/mix", 0.5)],  # CoBa's weights drive the sampler too
)
def test_kill_during_save_then_resume_matches_the_unbroken_run(small_tasks, tmp_path, apply_to, moving, static):
    overrides = [
        *small_data_overrides(small_tasks),
        "adapter=smora",
        "adapter.bias_update_rate=0.01",
        "balancer=coba",
        "balancer.warmup_steps=2",
        "balancer.update_interval=1",
        f"balancer.apply_to={apply_to}",
        "balancer.mix_smoothing=0.5",
        "trainer.max_steps=8",
        "trainer.save_steps=2",
        "trainer.logging_steps=1",
    ]
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    train = [sys.executable, "-m", "mtft.cli.train", *overrides]
    assert _run([*train, f"trainer.output_dir={straight}"]).returncode == 0

    crash = [sys.executable, str(Path(__file__).with_name("crash_during_save.py")), *overrides]
    killed = _run([*crash, f"trainer.output_dir={crashed}"], MTFT_CRASH_AT="6")
    assert killed.returncode == -9, killed.stderr[-2000:]
    half = crashed / "checkpoint-6"
    assert half.is_dir() and not (half / "COMPLETE").exists()  # a half checkpoint is really there

    resumed = _run([*train, f"trainer.output_dir={crashed}", "trainer.resume=auto"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected, got = _records(straight), _records(crashed)
    assert sorted(got) == list(range(1, 9))  # the records the killed run wrote past step 4 were replaced
    for step in range(5, 9):
        assert computed(got[step]) == computed(expected[step]), step
    assert expected[8][moving] != static  # CoBa is really adapting (the loss's weights, or the mix)
    final = "checkpoint-8/adapter/adapter_model.safetensors"
    assert (crashed / final).read_bytes() == (straight / final).read_bytes()
