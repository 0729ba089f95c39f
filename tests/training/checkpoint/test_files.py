"""Checkpoints: the saved adapter gives the trained logits back; a resumed run continues exactly."""

from __future__ import annotations

import dataclasses
import json
import shutil

import peft
import pytest
import torch

import mtft
from mtft.adapters import ADAPTERS
from mtft.balancers import BALANCERS
from mtft.models import load_model_and_tokenizer
from mtft.training.checkpoint.files import COMPLETE_MARKER, find_resume_checkpoint, load_checkpoint
from mtft.training.engine import build_engine
from mtft.training.loop import train
from tests.helpers import adapter_names, balancer_names, compose_config, computed, moved_key, small_data_overrides


def _config(tmp_path, small_tasks, *extra):
    return compose_config(
        [
            *small_data_overrides(small_tasks),
            f"trainer.output_dir={tmp_path}",
            "trainer.micro_batch_size=4",
            "trainer.logging_steps=1",
            "trainer.eval_steps=4",
            *extra,
        ]
    )


def _records(path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (path / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.parametrize("adapter", adapter_names())
def test_checkpoint_loads_back_to_the_same_logits(dist_group, small_tasks, tmp_path, adapter):
    cfg = _config(tmp_path, small_tasks, "trainer.max_steps=6", "trainer.lr=1e-2", f"adapter={adapter}")
    train(cfg)
    checkpoint = tmp_path / "checkpoint-6"
    assert (checkpoint / COMPLETE_MARKER).is_file()
    weights_file = "model.safetensors" if ADAPTERS[adapter].config.is_full_model else "adapter_model.safetensors"
    assert (checkpoint / "adapter" / weights_file).is_file()

    input_ids = torch.tensor([[5, 80, 81, 82, 99, 100, 40, 41]])

    def fresh_base():
        return load_model_and_tokenizer(cfg.model)[0].eval()

    def logits(model):
        return model.eval()(input_ids=input_ids).logits

    with torch.no_grad():
        base_logits = logits(fresh_base())
        # 1. the DeepSpeed engine state, loaded into a new engine
        engine = build_engine(ADAPTERS[adapter].inject(fresh_base(), cfg.adapter), cfg, world_size=1)
        load_checkpoint(engine, checkpoint)
        engine_logits = logits(engine.module)
        # 2. mtft's loader onto a fresh base model
        mtft_logits = logits(mtft.load_adapter(fresh_base(), checkpoint / "adapter"))
        assert (engine_logits - base_logits).abs().max() > 1e-3  # training changed the model
        torch.testing.assert_close(mtft_logits, engine_logits, atol=1e-6, rtol=0)
        if (checkpoint / "adapter" / "adapter_config.json").is_file():  # 3. saved in PEFT's format: PEFT's loader
            peft_logits = logits(peft.PeftModel.from_pretrained(fresh_base(), checkpoint / "adapter"))
            torch.testing.assert_close(peft_logits, engine_logits, atol=1e-6, rtol=0)


def test_resume_continues_exactly(dist_group, small_tasks, tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    train(_config(straight, small_tasks, "trainer.max_steps=8", "trainer.save_steps=4"))
    train(_config(broken, small_tasks, "trainer.max_steps=8", "trainer.save_steps=4"))
    # Simulate a crash after step 4's checkpoint: its later checkpoint is gone, an unfinished one is left over.
    shutil.rmtree(broken / "checkpoint-8")
    (broken / "checkpoint-6").mkdir()
    assert find_resume_checkpoint(broken, "auto") == broken / "checkpoint-4"

    train(_config(broken, small_tasks, "trainer.max_steps=8", "trainer.save_steps=4", "trainer.resume=auto"))

    expected, resumed = _records(straight), _records(broken)
    assert sorted(resumed) == sorted(expected) == list(range(1, 9))
    for step in range(5, 9):
        for key, value in computed(expected[step]).items():
            assert resumed[step][key] == value, (step, key)
    final = "checkpoint-8/adapter/adapter_model.safetensors"
    assert (straight / final).read_bytes() == (broken / final).read_bytes()


def test_fresh_run_refuses_a_used_output_dir(dist_group, small_tasks, tmp_path):
    from mtft.errors import ConfigError

    train(_config(tmp_path, small_tasks, "trainer.max_steps=1"))
    try:
        train(_config(tmp_path, small_tasks, "trainer.max_steps=1"))
    except ConfigError as err:
        assert err.key == "trainer.output_dir" and "resume=auto" in str(err)
    else:
        raise AssertionError("a second fresh run into the same output_dir must be refused")


@pytest.mark.parametrize("stage", ["zero2", "zero3", "zero2_offload", "zero3_offload"])
def test_zero_stages_match_zero0(dist_group, small_tasks, tmp_path, stage):
    """One process: sharding (and offloading to the CPU, with DeepSpeed's CPU AdamW) must not change the
    trajectory. Float sums run in another order, so equal to 1e-5, not bitwise."""
    shard_everything = tmp_path / "zero3.json"  # ZeRO-3 would keep this tiny model's parameters whole otherwise
    shard_everything.write_text('{"zero_optimization": {"stage3_param_persistence_threshold": 0}}')
    extra = ("trainer.max_steps=6", "trainer.grad_accum_steps=2", "adapter=smora")
    train(_config(tmp_path / "z0", small_tasks, *extra, "deepspeed=zero0"))
    zero = [f"deepspeed={stage}"] + ([f"deepspeed.config_file={shard_everything}"] if "zero3" in stage else [])
    train(_config(tmp_path / stage, small_tasks, *extra, *zero))
    assert (tmp_path / stage / "checkpoint-6" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").is_file()
    z0, other = _records(tmp_path / "z0"), _records(tmp_path / stage)
    for step in range(1, 7):
        for key, value in z0[step].items():
            if key.startswith(("loss", "task/")):
                assert other[step][key] == pytest.approx(value, rel=1e-5), (step, key)


def test_zero3_loads_a_checkpoint_straight_into_shards(dist_group, small_tasks, tmp_path):
    """A real model directory under ZeRO-3 never exists whole on a rank (deepspeed.zero.Init while loading), and
    training from it follows ZeRO-0's trajectory."""
    from mtft.models import ModelConfig, TinyModelConfig, build_byte_tokenizer, build_tiny_model
    from mtft.training.engine import deepspeed_config, sharded_loading

    tokenizer = build_byte_tokenizer()
    build_tiny_model(TinyModelConfig(), tokenizer).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    model_cfg = ModelConfig(name_or_path=str(tmp_path / "model"))
    zero3 = deepspeed_config(compose_config(["deepspeed=zero3"]), world_size=1)
    with sharded_loading(zero3):
        sharded, _ = load_model_and_tokenizer(model_cfg)
    assert all(hasattr(p, "ds_id") and p.numel() == 0 for p in sharded.parameters())
    with sharded_loading(deepspeed_config(compose_config([]), world_size=1)):
        plain, _ = load_model_and_tokenizer(model_cfg)
    assert not any(hasattr(p, "ds_id") for p in plain.parameters())

    extra = ("model=hf", f"model.name_or_path={tmp_path / 'model'}", "trainer.max_steps=4")
    train(_config(tmp_path / "z0", small_tasks, *extra))
    train(_config(tmp_path / "z3", small_tasks, *extra, "deepspeed=zero3"))
    z0, z3 = _records(tmp_path / "z0"), _records(tmp_path / "z3")
    for step in range(1, 5):
        assert z3[step]["loss"] == pytest.approx(z0[step]["loss"], rel=1e-5), step


def test_packed_training_resumes_exactly(dist_group, small_tasks, tmp_path):
    """Packing keeps samples that did not fit for the next micro-batch: that queue is saved and restored too."""
    extra = ("trainer.max_steps=6", "trainer.save_steps=3", "trainer.micro_batch_size=2", "data.packing=true")
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    train(_config(straight, small_tasks, *extra))
    train(_config(broken, small_tasks, *extra))
    shutil.rmtree(broken / "checkpoint-6")
    pending = torch.load(broken / "checkpoint-3" / "rank_state_0.pt", weights_only=False)["batches"]["pending"]
    assert pending  # the queue is really part of the state here
    train(_config(broken, small_tasks, *extra, "trainer.resume=auto"))
    expected, resumed = _records(straight), _records(broken)
    for step in range(4, 7):
        assert computed(resumed[step]) == computed(expected[step])


# Settings, by config field, that make an adaptive balancer move (and fill its bounded history) within 12 steps.
RESUME_SETTINGS = {"warmup_steps": 3, "history": 5, "window": 2}


@pytest.mark.parametrize("name", balancer_names("adaptive"))
def test_adaptive_balancers_resume_exactly(dist_group, small_tasks, tmp_path, name):
    """2S steps straight, and S steps + resume + S: the weights, balancer internals and losses match exactly."""
    fields = {f.name for f in dataclasses.fields(BALANCERS[name].config)}
    balancer = [f"balancer={name}", *(f"balancer.{k}={v}" for k, v in RESUME_SETTINGS.items() if k in fields)]
    extra = ("trainer.max_steps=12", "trainer.save_steps=6", *balancer)
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    train(_config(straight, small_tasks, *extra))
    train(_config(broken, small_tasks, *extra))
    shutil.rmtree(broken / "checkpoint-12")
    train(_config(broken, small_tasks, *extra, "trainer.resume=auto"))
    expected, resumed = _records(straight), _records(broken)
    key = f"task/add/{moved_key(name)}"  # the loss's weights, or the mix it drives (ODM's default)
    assert expected[12][key] != expected[1][key]  # the balancer is really adapting
    for step in range(7, 13):
        assert computed(resumed[step]) == computed(expected[step])


def test_save_total_limit_keeps_the_newest_and_the_resumed_one(dist_group, tmp_path):
    from mtft.training.checkpoint.files import complete_checkpoints, prune_checkpoints

    for step in (2, 4, 6, 8):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / COMPLETE_MARKER).write_text(f"{step}\n")
    (tmp_path / "checkpoint-10").mkdir()  # unfinished: never counted, never deleted here
    prune_checkpoints(tmp_path, keep=2, protect=tmp_path / "checkpoint-2")
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-6", "checkpoint-8"]
    assert (tmp_path / "checkpoint-10").is_dir()
    prune_checkpoints(tmp_path, keep=0, protect=None)  # 0 keeps everything
    assert len(complete_checkpoints(tmp_path)) == 3
