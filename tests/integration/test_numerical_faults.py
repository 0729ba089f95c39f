"""An absurd learning rate on the demo: the run stops, exits non-zero and says why, instead of "succeeding" with
NaN weights (as it once did: 40 steps of NaN loss, a checkpoint of NaN weights, exit 0)."""

from __future__ import annotations

import json
import math

import pytest
import safetensors.torch

from tests.helpers import run_cli

pytestmark = pytest.mark.integration


def test_lr_1e30_on_the_demo_stops_within_max_bad_steps_plus_one(tmp_path):
    out = tmp_path / "absurd"
    proc = run_cli(["trainer.lr=1e30", "trainer.warmup_steps=0", f"trainer.output_dir={out}"])
    assert proc.returncode == 3, proc.stderr[-2000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("mtft-train: error: training stopped at step ")
    stopped_at = int(error.split("training stopped at step ")[1].split(":")[0])
    assert stopped_at <= 5 + 1  # trainer.max_bad_steps defaults to 5
    assert "First non-finite quantity" in error and ("loss of task" in error or "gradient" in error)
    assert "Traceback" not in proc.stderr
    assert f"step {stopped_at}/1000  SKIPPED (5 in a row" in proc.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == stopped_at and records[-1]["train/skipped_steps"] == 5
    assert not (out / "summary.json").exists()  # no closing table that could call a task "lower"
    for weights in out.glob("checkpoint-*/adapter/*.safetensors"):  # none is written; any that were must be finite
        assert all(math.isfinite(float(t.float().abs().max())) for t in safetensors.torch.load_file(weights).values())
