"""mtft-export: LoRA merges into a plain HF model; MoE adapters export unmerged and refuse to merge."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import mtft
from mtft.cli.export import main
from mtft.models import TinyModelConfig, build_byte_tokenizer, build_tiny_model
from mtft.training.loop import train
from tests.helpers import compose_config, small_data_overrides

INPUT_IDS = torch.tensor([[5, 80, 81, 82, 99, 100, 40, 41]])


def _trained(adapter, small_tasks, out):
    cfg = [f"adapter={adapter}", *small_data_overrides(small_tasks), "trainer.max_steps=3", "trainer.lr=1e-2"]
    train(compose_config([*cfg, f"trainer.output_dir={out}"]))
    return out / "checkpoint-3"


def _logits(model):
    with torch.no_grad():
        return model.eval()(input_ids=INPUT_IDS).logits


def _adapted(directory):
    return mtft.load_adapter(build_tiny_model(TinyModelConfig(), build_byte_tokenizer()), directory)


@pytest.mark.integration
def test_lora_merges_into_a_plain_model(dist_group, small_tasks, tmp_path):
    checkpoint = _trained("lora", small_tasks, tmp_path / "run")
    main([f"checkpoint={checkpoint}", f"out={tmp_path / 'merged'}", "merge=true"])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged), _logits(_adapted(checkpoint / "adapter")), atol=1e-5, rtol=0)


@pytest.mark.integration
def test_moe_adapter_exports_unmerged_and_refuses_to_merge(dist_group, small_tasks, tmp_path, capsys):
    checkpoint = _trained("smora", small_tasks, tmp_path / "run")
    with pytest.raises(SystemExit) as exit_info:
        main([f"checkpoint={checkpoint}", f"out={tmp_path / 'merged'}", "merge=true"])
    assert exit_info.value.code == 2
    assert "cannot be merged: routing is per token" in capsys.readouterr().err
    main([f"checkpoint={checkpoint}", f"out={tmp_path / 'exported'}"])
    assert (tmp_path / "exported" / "adapter_model.safetensors").is_file()
    torch.testing.assert_close(
        _logits(_adapted(tmp_path / "exported")), _logits(_adapted(checkpoint / "adapter")), atol=0, rtol=0
    )


@pytest.mark.integration
def test_zero3_full_finetune_is_gathered_and_consolidated_from_the_shards(dist_group, small_tasks, tmp_path):
    """Under ZeRO-3 a full fine-tune's checkpoint holds the whole model, consolidated layer by layer on rank 0, and
    `mtft-export from_shards=true` rebuilds the same from the shards: both equal the ZeRO-0 run's model."""
    shard_everything = tmp_path / "zero3.json"
    shard_everything.write_text('{"zero_optimization": {"stage3_param_persistence_threshold": 0}}')
    cfg = ["adapter=none", *small_data_overrides(small_tasks), "trainer.max_steps=3", "trainer.lr=1e-3"]
    train(compose_config([*cfg, f"trainer.output_dir={tmp_path / 'zero0'}"]))
    zero3 = ["deepspeed=zero3", f"deepspeed.config_file={shard_everything}"]
    train(compose_config([*cfg, *zero3, f"trainer.output_dir={tmp_path / 'zero3'}"]))
    checkpoint = tmp_path / "zero3" / "checkpoint-3"
    main([f"checkpoint={checkpoint}", f"out={tmp_path / 'exported'}", "from_shards=true"])
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "zero0" / "checkpoint-3" / "adapter")
    for candidate in (checkpoint / "adapter", tmp_path / "exported"):
        model = AutoModelForCausalLM.from_pretrained(candidate)
        for (name, got), (_, expected) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5, msg=f"{candidate}: {name}")
    assert (_logits(reference) - _logits(build_tiny_model(TinyModelConfig(), build_byte_tokenizer()))).abs().max() > 0
