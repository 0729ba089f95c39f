"""SIGTERM mid-run: the step finishes, a checkpoint is saved, the process exits 0, and a resume continues
exactly where an unbroken run would be."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import LAUNCH_VARS, small_data_overrides

pytestmark = pytest.mark.integration


def _command(out, small_tasks, *extra):
    overrides = [*small_data_overrides(small_tasks), "trainer.max_steps=150", "trainer.logging_steps=1"]
    overrides += ["trainer.eval_steps=1000", f"trainer.output_dir={out}", *extra]
    return [sys.executable, "-m", "mtft.cli.train", *overrides]


def _records(out) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def test_sigterm_saves_exits_zero_and_resumes_exactly(small_tasks, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    straight, preempted = tmp_path / "straight", tmp_path / "preempted"
    subprocess.run(_command(straight, small_tasks), check=True, capture_output=True, env=env, timeout=300)

    proc = subprocess.Popen(
        _command(preempted, small_tasks), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    metrics = preempted / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or metrics.read_text().count("\n") < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert "preempted; saved checkpoint-" in stdout
    (checkpoint,) = [p for p in preempted.glob("checkpoint-*") if (p / "COMPLETE").is_file()]
    stopped_at = int(checkpoint.name.split("-")[1])
    assert 3 <= stopped_at < 150 and not (preempted / "summary.json").exists()

    resumed = subprocess.run(
        _command(preempted, small_tasks, "trainer.resume=auto"), capture_output=True, text=True, env=env, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected, got = _records(straight), _records(preempted)
    assert sorted(got) == sorted(expected)
    for step in range(stopped_at + 1, 151):
        assert got[step]["loss"] == expected[step]["loss"], step
