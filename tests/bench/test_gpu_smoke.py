"""The GPU smoke (mtft/bench/gpu_smoke.py): each check catches the failure it exists for, the full run refuses a
machine without CUDA, `--tiny` takes the whole path on a CPU, and on a GPU the MoLoRA run of issue 11 (NaN
gradients at every bf16 step, every step silently skipped by DeepSpeed) must pass."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mtft.adapters import adapter_variants, baseline_adapter
from mtft.bench import gpu_smoke
from mtft.models import build_byte_tokenizer
from tests.helpers import adapter_names, compose_config

REPO = Path(__file__).resolve().parents[2]
FALLING = [5.0, 4.9, 4.8, 4.6, 4.5, 4.3, 4.2, 4.0, 3.9, 3.7]


def _write_run(run_dir: Path, losses: list[float], lrs=None, skipped=None, summary: dict | None = None) -> Path:
    """A run directory as mtft-train leaves it: one metrics record per step, 4000 tokens a step."""
    run_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for i, loss in enumerate(losses):
        record = {
            "step": i + 1,
            "loss": loss,
            "lr": 1e-3 if lrs is None else lrs[i],
            "tokens_per_second": 1000.0 * (i + 1),
        }
        if skipped is not None:
            record["train/skipped_steps"] = skipped[i]
        records.append(record)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"steps": len(losses), "tokens": 4000 * len(losses), **(summary or {})}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def _check(run_dir: Path, returncode: int = 0, steps: int = 10) -> dict:
    return gpu_smoke.check_run(run_dir, returncode, "", warmup_steps=2, steps=steps)


def test_a_healthy_run_passes_with_its_measures(tmp_path):
    result = _check(_write_run(tmp_path, FALLING, skipped=[0] * 10))
    assert result["problems"] == []
    assert result["first_loss_mean"] == pytest.approx(sum(FALLING[:5]) / 5)
    assert result["last_loss_mean"] == pytest.approx(sum(FALLING[5:]) / 5)
    assert result["tokens_per_second"] == 7000.0  # median of steps 4..10: the first three are warm-up
    assert result["step_seconds"] == pytest.approx(4000 / 7000)
    assert result["skipped_steps"] == 0 and result["skipped_steps_reported"]


def test_a_nan_loss_fails(tmp_path):
    losses = [*FALLING[:4], math.nan, *FALLING[5:]]
    assert "loss not finite at steps [5]" in _check(_write_run(tmp_path, losses))["problems"]


def test_steps_deepspeed_skipped_silently_fail_by_their_lr(tmp_path):
    """Issue 11: no skip counter, a finite falling loss even, but the schedule never left warm-up's lr of 0."""
    problems = _check(_write_run(tmp_path, FALLING, lrs=[0.0] * 10))["problems"]
    assert len(problems) == 1 and problems[0].startswith("lr is 0 after warm-up at steps [2, 3,")


def test_skipped_steps_the_loop_reports_fail(tmp_path):
    result = _check(_write_run(tmp_path, FALLING, skipped=[0] * 8 + [1, 1]))
    assert result["problems"] == ["1 optimizer step(s) skipped"]
    result = _check(_write_run(tmp_path / "b", FALLING, skipped=[0] * 10, summary={"skipped_steps": 2}))
    assert result["problems"] == ["2 optimizer step(s) skipped"]


def test_a_loss_that_does_not_fall_fails(tmp_path):
    problems = _check(_write_run(tmp_path, FALLING[::-1]))["problems"]
    assert len(problems) == 1 and problems[0].startswith("loss did not fall")


def test_a_failed_or_short_run_fails(tmp_path):
    result = gpu_smoke.check_run(tmp_path / "none", 1, "Traceback ...\nValueError: boom", 2, 10)
    assert result["problems"][0] == "exited 1; stderr ends:\nTraceback ...\nValueError: boom"
    assert result["problems"][1].startswith("no metrics records")
    assert _check(_write_run(tmp_path / "short", FALLING[:6]))["problems"] == ["ran 6 of 10 steps"]


def test_the_full_smoke_refuses_a_machine_without_cuda(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_smoke.main(["--out", str(tmp_path / "smoke")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA device" in err
    assert not (tmp_path / "smoke").exists()  # refused before building anything


def test_unknown_runs_are_refused():
    with pytest.raises(SystemExit):
        gpu_smoke.parse_args(["--adapters", "lora,bogus"])


@pytest.mark.parametrize("name", list(gpu_smoke.RUNS))
def test_each_run_is_the_issues_setup_and_a_valid_config(name, tmp_path):
    overrides = gpu_smoke.train_overrides(gpu_smoke.GPU, name, tmp_path / "model", tmp_path / name, 30)
    cfg = compose_config(overrides)
    assert (cfg.data.packing, cfg.data.max_seq_len, cfg.trainer.micro_batch_size) == (True, 2048, 4)
    assert (cfg.deepspeed.precision, cfg.trainer.max_steps, cfg.trainer.logging_steps) == ("bf16", 30, 1)
    assert cfg.trainer.eval_generations == 0 and cfg.model.name_or_path == str(tmp_path / "model")
    adapter, settings = adapter_variants(runs=True)[name]
    assert cfg.adapter.name == adapter and settings.items() <= vars(cfg.adapter).items()


@pytest.mark.integration
def test_tiny_smoke_on_cpu_end_to_end(tmp_path):
    """scripts/gpu_smoke.sh --tiny: the model built and saved, two real mtft-train runs (the baseline and a
    mixture), the checks, the table."""
    out = tmp_path / "smoke"
    env = {**os.environ, "PYTHON": sys.executable}
    runs = [baseline_adapter(), adapter_names("moe")[0]]
    command = [str(REPO / "scripts" / "gpu_smoke.sh"), "--tiny", "--adapters", ",".join(runs), "--steps", "4"]
    proc = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    config = json.loads((out / "model" / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["hidden_size"] == 64 and config["tie_word_embeddings"]
    assert config["vocab_size"] == len(build_byte_tokenizer())
    assert (config.get("rope_theta") or config["rope_parameters"]["rope_theta"]) == 1e6  # transformers 4 or 5
    report = json.loads((out / "gpu_smoke.json").read_text())
    assert report["passed"] and report["device"] == "cpu" and list(report["results"]) == runs
    for name, result in report["results"].items():
        assert result["problems"] == [] and result["steps_logged"] == 4
        assert result["last_loss_mean"] < result["first_loss_mean"] and result["skipped_steps"] == 0
        assert result["tokens_per_second"] > 0 and result["step_seconds"] > 0
        run_config = yaml.safe_load((out / "runs" / name / "config.yaml").read_text())
        assert run_config["model"]["name_or_path"] == str((out / "model").resolve())
        assert run_config["adapter"]["name"] == name and run_config["deepspeed"]["precision"] == "fp32"
    assert report["ratios"][f"{runs[1]}_step_time_over_{runs[0]}"] > 0
    table = proc.stdout[proc.stdout.index("tokens/s") :]
    assert [line.split()[0] for line in table.splitlines()[1:3]] == runs
    assert table.splitlines()[1].endswith("pass") and "PASSED" in proc.stdout


@pytest.mark.gpu
@pytest.mark.integration
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_molora_bf16_packed_on_a_gpu(tmp_path):
    """Issue 11's reproduction: MoLoRA, bf16, packed 4 x 2048, on the Qwen2.5-0.5B shape, 30 steps."""
    assert gpu_smoke.main(["--adapters", "molora", "--out", str(tmp_path / "smoke")]) == 0
    result = json.loads((tmp_path / "smoke" / "gpu_smoke.json").read_text())["results"]["molora"]
    assert result["problems"] == [] and result["skipped_steps"] == 0 and result["peak_gpu_gb"] > 0
