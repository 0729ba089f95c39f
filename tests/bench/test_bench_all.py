"""`mtft-bench all --quick`: every suite's code path behind one command, one report (CI runs it)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mtft.bench import all_suites

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_every_suite_runs_and_reports_its_ratios(tmp_path, capsys):
    out = tmp_path / "all.json"
    assert all_suites.main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["quick"] and set(report["suites"]) == {"data", "adapters", "balancer", "memory", "ops", "gpu"}
    for name in ("data", "adapters", "balancer", "memory", "ops"):
        ratios = report["suites"][name]["ratios"]
        assert ratios and all(report["ratios"][f"{name}/{key}"] == value for key, value in ratios.items())
    assert all(math.isfinite(value) and value > 0 for value in report["ratios"].values())
    if not torch.cuda.is_available():
        assert report["suites"]["gpu"] == {"skipped": "no CUDA device", "ratios": {}}
        assert "gpu: skipped (no CUDA device)" in capsys.readouterr().out
