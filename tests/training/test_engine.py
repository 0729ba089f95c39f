"""The DeepSpeed config is filled from ours; a user's own JSON supplies the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mtft.errors import ConfigError
from mtft.training.engine import deepspeed_config, guards_on_device
from tests.helpers import compose_config


def test_batch_sizes_precision_and_clipping_come_from_our_config():
    cfg = compose_config(
        ["trainer.micro_batch_size=3", "trainer.grad_accum_steps=5", "trainer.max_grad_norm=0.5", "deepspeed=zero2"]
    )
    ds = deepspeed_config(cfg, world_size=4)
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 5
    assert ds["train_batch_size"] == 3 * 5 * 4
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False
    # ZeRO-2 with torch AdamW: GuardedAdamW clips by the norm it computes; DeepSpeed's own norm is off
    assert ds["gradient_clipping"] == 0.0 and ds["zero_optimization"] == {"stage": 2, "compute_grad_norm": False}
    ds = deepspeed_config(compose_config(["trainer.max_grad_norm=0.5", "deepspeed=zero3"]), world_size=4)
    assert ds["gradient_clipping"] == 0.5 and "compute_grad_norm" not in ds["zero_optimization"]


@pytest.mark.parametrize(
    ("overrides", "guarded"),
    [
        (["deepspeed.precision=bf16"], True),
        (["deepspeed.precision=fp32"], True),
        (["deepspeed=zero2", "deepspeed.stage=1", "deepspeed.precision=bf16"], True),
        (["deepspeed=zero2", "deepspeed.precision=fp32"], True),
        (["deepspeed=zero2", "deepspeed.precision=fp16"], False),  # fp16's loss scaling is DeepSpeed's
        (["deepspeed=zero2", "deepspeed.offload_optimizer=true"], False),  # DeepSpeed's CPU Adam
        (["deepspeed=zero2", "trainer.optimizer=fused_adamw"], False),  # DeepSpeed's FusedAdam
        (["deepspeed=zero3", "deepspeed.precision=bf16"], False),
    ],
)
def test_the_guard_decides_on_the_device_for_zero_0_to_2_with_torch_adamw(overrides, guarded):
    assert guards_on_device(compose_config(overrides)) is guarded


def test_user_json_keeps_its_own_keys_but_not_ours(tmp_path):
    path = tmp_path / "ds.json"
    user = {"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": 1, "overlap_comm": True}}
    path.write_text(json.dumps({**user, "bf16": {"enabled": "auto"}, "activation_checkpointing": {"x": 1}}))
    cfg = compose_config([f"deepspeed.config_file={path}", "deepspeed.precision=bf16", "trainer.micro_batch_size=2"])
    ds = deepspeed_config(cfg, world_size=1)
    assert ds["train_micro_batch_size_per_gpu"] == 2  # "auto" filled from trainer.*
    assert ds["zero_optimization"] == {"stage": 0, "overlap_comm": True}  # deepspeed.stage wins, the rest stays
    # ZeRO-0 is the lean step's: it casts the model and keeps the fp32 masters itself, DeepSpeed's bf16 stays off
    assert ds["bf16"]["enabled"] is False and ds["activation_checkpointing"] == {"x": 1}
    cfg = compose_config([f"deepspeed.config_file={path}", "deepspeed.precision=bf16", "deepspeed=zero2"])
    assert deepspeed_config(cfg, world_size=1)["bf16"]["enabled"] is True  # ZeRO-1/2/3: DeepSpeed's own


@pytest.mark.parametrize("contents", ['{"optimizer": {"type": "Adam"}}', "{not json"])
def test_user_json_problems_name_the_key(tmp_path, contents):
    path = tmp_path / "ds.json"
    path.write_text(contents)
    with pytest.raises(ConfigError) as info:
        deepspeed_config(compose_config([f"deepspeed.config_file={path}"]), world_size=1)
    assert info.value.key == "deepspeed.config_file" and str(path) in str(info.value)


def test_a_stale_extension_lock_does_not_hang_deepspeed_on_a_cpu(tmp_path):
    """A process killed while it held DeepSpeed's shared-memory op lock (~/.cache/torch_extensions) used to make
    every later DeepSpeed start on the machine wait forever: mtft's engine never builds that op."""
    (tmp_path / "deepspeed_shm_comm").mkdir()
    (tmp_path / "deepspeed_shm_comm" / "lock").touch()
    script = (
        "from mtft.training.engine import init_distributed\n"
        "import deepspeed.comm.comm as comm\n"
        "print(init_distributed(), comm.cdb.shm_comm_op)\n"
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == "(0, 1) None"
