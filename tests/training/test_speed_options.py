"""The speed and memory options, through the training loop: trainer.cross_entropy=chunked with
trainer.gradient_checkpointing trains exactly as the plain path does (fp32, packed rows, a mixture of experts)."""

from __future__ import annotations

import json

import pytest

from mtft.training.loop import train
from tests.helpers import compose_config

STEPS = ["trainer.max_steps=4", "trainer.logging_steps=1", "trainer.eval_steps=4", "trainer.eval_generations=0"]


def _losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records], [r.get("router/mean_entropy") for r in records]


def test_chunked_loss_with_checkpointing_trains_as_the_plain_path(tmp_path):
    common = [*STEPS, "adapter=smora", "data.packing=true", "data.max_seq_len=128", "trainer.micro_batch_size=2"]
    train(compose_config([*common, f"trainer.output_dir={tmp_path / 'plain'}"]))
    fast = [*common, "trainer.cross_entropy=chunked", "trainer.gradient_checkpointing=true"]
    train(compose_config([*fast, f"trainer.output_dir={tmp_path / 'fast'}"]))
    plain_losses, plain_entropy = _losses(tmp_path / "plain")
    fast_losses, fast_entropy = _losses(tmp_path / "fast")
    assert fast_losses == pytest.approx(plain_losses, rel=1e-5)
    assert None not in plain_entropy and fast_entropy == pytest.approx(
        plain_entropy, rel=1e-5
    )  # routing statistics counted once, as without


def test_auto_attention_is_sdpa_on_a_cpu_and_flash_attention_where_it_can_run(monkeypatch):
    import importlib.util

    import torch

    from mtft.models import resolve_attention

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_attention("auto") == "sdpa"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # CUDA, but no flash-attn installed
    assert resolve_attention("auto") == "sdpa"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert resolve_attention("auto") == "flash_attention_2"
    assert resolve_attention("eager") == "eager"  # an explicit choice is kept


def test_auto_precision_is_fp32_on_a_cpu_and_bf16_on_a_gpu_that_has_it(monkeypatch):
    import torch

    from mtft.training.engine import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # e.g. a V100
    assert resolve_precision("auto") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto") == "bf16"
    assert resolve_precision("fp16") == "fp16"


def test_the_run_records_the_choices_auto_made(tmp_path, capsys):
    out = tmp_path / "run"
    train(compose_config([*STEPS, "trainer.max_steps=1", f"trainer.output_dir={out}"]))
    printed = capsys.readouterr().out
    assert "precision fp32 (deepspeed.precision=auto)" in printed and "attention sdpa" in printed
    assert "precision: fp32" in (out / "config.yaml").read_text()


def test_fused_adamw_where_it_cannot_run_is_a_config_error_naming_the_key(tmp_path, monkeypatch):
    import torch

    from mtft.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for setting, why in (
        (["deepspeed=zero2"], "CUDA"),
        (["deepspeed=zero2", "deepspeed.offload_optimizer=true"], "offload"),
    ):
        cfg = compose_config([*STEPS, "trainer.optimizer=fused_adamw", *setting])
        cfg.trainer.output_dir = str(tmp_path / setting[0])
        with pytest.raises(ConfigError, match=f"trainer.optimizer.*{why}"):
            train(cfg)
