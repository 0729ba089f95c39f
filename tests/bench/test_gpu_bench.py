"""`mtft-bench gpu --dry-run`: the GPU benchmark's whole code path at a tiny shape on the CPU."""

from __future__ import annotations

import json
import math

import torch

from mtft.bench import gpu


def test_the_dry_run_measures_every_configuration_and_its_ratios(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    configs = "plain,lora,smora,lora+chunked+ckpt,smora+chunked+ckpt"
    assert gpu.main(["--dry-run", "--configs", configs, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["results"]) == configs.split(",")
    for result in report["results"].values():
        assert result["step_seconds"] > 0 and result["tokens_per_second"] > 0 and result["trainable_parameters"] > 0
    assert set(report["ratios"]) == {
        "lora_throughput_over_plain",
        "smora_throughput_over_plain",
        "lora+chunked+ckpt_throughput_over_plain",
        "smora+chunked+ckpt_throughput_over_plain",
        "smora_step_over_lora",
        "smora+chunked+ckpt_step_over_lora+chunked+ckpt",
    }
    assert all(math.isfinite(v) and v > 0 for v in report["ratios"].values())
    assert "lora_throughput_over_plain" in capsys.readouterr().out


def test_mor1e_is_matched_to_lora_r64_parameters():
    model = gpu.build_base(gpu.Setup(gpu.SHAPES["0.5b"], "fp32", torch.device("meta"), 1, 8, "sdpa"))  # no memory
    cfg = gpu.adapter_config("mor1e", model)
    head = model.get_output_embeddings()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    shapes = [(m.in_features, m.out_features) for m in linears]
    lora = sum(64 * (i + o) for i, o in shapes)
    mor1e = sum(cfg.num_down * (i + o) + i * cfg.num_down * cfg.num_up for i, o in shapes)
    assert abs(mor1e - lora) / lora < 0.1
