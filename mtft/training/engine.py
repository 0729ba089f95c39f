"""The one seam to DeepSpeed: process-group setup and the engine, which owns precision, gradient accumulation,
clipping, the optimizer step, ZeRO and checkpoints. There is no second, non-DeepSpeed path.

Everything else asks this module (and the parameter views in mtft/distributed.py) rather than DeepSpeed: whether
parameters are sharded, gathering them, consolidating a sharded model, loading straight into shards, and whether
generation is collective. A test holds every DeepSpeed import and engine internal to these two files."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers import get_scheduler

from mtft.config.train import TrainConfig
from mtft.errors import ConfigError
from mtft.training.guard import FiniteCheckedAdamW


def init_distributed() -> tuple[int, int]:
    """Join (or, with no launcher, create) the process group; returns (rank, world size).

    A plain `mtft-train` is a one-process "launch": without RANK/WORLD_SIZE/MASTER_* DeepSpeed would try MPI
    discovery and fail, so they are filled in here. On a machine without CUDA, DS_ACCELERATOR=cpu and gloo.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed

    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def resolve_precision(precision: str) -> str:
    """`auto` made concrete: bf16 where the GPU computes in it (Ampere and later), else fp32 (a CPU, older GPUs)."""
    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """The engine's config, filled from ours so batch sizes, precision and clipping are never typed twice.
    A user's own JSON (deepspeed.config_file) supplies everything else."""
    ds: dict[str, Any] = {}
    if cfg.deepspeed.config_file:
        path = Path(cfg.deepspeed.config_file)
        try:
            ds = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError("deepspeed.config_file", f"cannot read {path}: {err}") from None
        owned = sorted({"optimizer", "scheduler"} & set(ds))
        if owned:
            raise ConfigError(
                "deepspeed.config_file", f"{path} sets {owned}; mtft builds these from trainer.* (remove them)"
            )
    t = cfg.trainer
    ds.update(
        train_micro_batch_size_per_gpu=t.micro_batch_size,
        gradient_accumulation_steps=t.grad_accum_steps,
        train_batch_size=t.micro_batch_size * t.grad_accum_steps * world_size,
        # where DeepSpeed has no overflow check, FiniteCheckedAdamW clips and checks with the one norm (guard.py)
        gradient_clipping=0.0 if _unchecked_by_deepspeed(cfg) else t.max_grad_norm,
        steps_per_print=10**9,
    )
    zero = ds.setdefault("zero_optimization", {})
    zero["stage"] = cfg.deepspeed.stage
    offload = {"device": "cpu", "pin_memory": torch.cuda.is_available()}  # a user's JSON may refine either
    if cfg.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {**offload, **zero.get("offload_optimizer", {})}
    if cfg.deepspeed.offload_params:
        zero["offload_param"] = {**offload, **zero.get("offload_param", {})}
    precision = resolve_precision(cfg.deepspeed.precision)
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": precision == "bf16"}
    ds["fp16"] = {**ds.get("fp16", {}), "enabled": precision == "fp16"}
    ds["zero_allow_untested_optimizer"] = True  # our AdamW is a plain torch optimizer
    return ds


def _unchecked_by_deepspeed(cfg: TrainConfig) -> bool:
    """Plain fp32 without ZeRO: the one setup where DeepSpeed steps the optimizer without an overflow check."""
    return cfg.deepspeed.stage == 0 and resolve_precision(cfg.deepspeed.precision) == "fp32"


def build_engine(model: nn.Module, cfg: TrainConfig, world_size: int):
    """AdamW over the trainable parameters and a transformers LR schedule, handed to the DeepSpeed engine.
    With the optimizer offloaded, DeepSpeed's vectorised CPU AdamW (JIT-compiled on first use) does the step.
    In plain fp32 without ZeRO, an AdamW that skips non-finite steps itself (training/guard.py)."""
    import deepspeed
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    t = cfg.trainer
    trainable = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "fused_adamw" and (_unchecked_by_deepspeed(cfg) or cfg.deepspeed.offload_optimizer):
        raise ConfigError("trainer.optimizer", "fused_adamw needs bf16/fp16 or ZeRO, and no optimizer offload")
    if t.optimizer == "fused_adamw" and not torch.cuda.is_available():
        raise ConfigError("trainer.optimizer", "fused_adamw is DeepSpeed's CUDA FusedAdam; without a GPU use adamw")
    if _unchecked_by_deepspeed(cfg):
        optimizer = FiniteCheckedAdamW(trainable, t.max_grad_norm, lr=t.lr, weight_decay=t.weight_decay)
    elif cfg.deepspeed.offload_optimizer:
        optimizer = DeepSpeedCPUAdam(trainable, lr=t.lr, weight_decay=t.weight_decay)
    elif t.optimizer == "fused_adamw":
        from deepspeed.ops.adam import FusedAdam

        optimizer = FusedAdam(trainable, lr=t.lr, weight_decay=t.weight_decay, adam_w_mode=True)
    else:
        optimizer = torch.optim.AdamW(trainable, lr=t.lr, weight_decay=t.weight_decay)
    scheduler = get_scheduler(
        t.lr_scheduler, optimizer, num_warmup_steps=t.warmup_steps, num_training_steps=t.max_steps
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg, world_size)
    )
    return engine


def partitioned_for_inference(model: nn.Module, cfg: TrainConfig, world_size: int):
    """The model's parameters partitioned over the ranks by ZeRO-3, for evaluation: an engine with no optimizer
    (DeepSpeed's ZeRO-3 inference), whose forwards gather each layer's shards and free them after. The run's
    DeepSpeed settings (its config file, parameter offload) at stage 3, in the precision `model` was loaded in,
    so the numbers are those of the unpartitioned model."""
    import deepspeed

    config = deepspeed_config(cfg, world_size)
    config["zero_optimization"]["stage"] = 3
    config["zero_optimization"].pop("offload_optimizer", None)  # there is no optimizer
    config["bf16"]["enabled"] = next(model.parameters()).dtype == torch.bfloat16
    config["fp16"]["enabled"] = False
    engine, _, _, _ = deepspeed.initialize(model=model, config=config)
    return engine


def is_sharded(engine) -> bool:
    """ZeRO-3: every rank holds only a shard of each parameter."""
    return engine.zero_optimization_stage() == 3


def generation_is_collective(engine) -> bool:
    """Under ZeRO-3 with several ranks each forward gathers shards from all ranks, so all generate in step."""
    return is_sharded(engine) and engine.world_size > 1


@contextlib.contextmanager
def gathered(engine, params: list[nn.Parameter]):
    """The whole `params` on every rank inside the block (collective under ZeRO-3; nothing to do otherwise)."""
    if not is_sharded(engine):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def consolidated_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """The whole model's 16-bit state dict on rank 0 (None elsewhere), gathered one layer at a time into CPU
    memory. A private DeepSpeed method, as accelerate also uses; the ZeRO-3 full-fine-tune tests would catch a
    rename."""
    return engine._zero3_consolidated_16bit_state_dict()


@contextlib.contextmanager
def sharded_loading(deepspeed_config: dict[str, Any]):
    """transformers loads a checkpoint straight into ZeRO-3 shards (deepspeed.zero.Init) while an HfDeepSpeedConfig
    object is alive (it keeps a weak reference): only for the loads inside this block."""
    if deepspeed_config.get("zero_optimization", {}).get("stage") != 3:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig

    alive = HfDeepSpeedConfig(deepspeed_config)
    try:
        yield
    finally:
        del alive


def fp32_state_from_shards(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The trained parameters of a DeepSpeed checkpoint, consolidated from its ZeRO shards in fp32 (DeepSpeed's
    zero_to_fp32). ValueError or FileNotFoundError when `checkpoint` holds no shards."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(
        str(checkpoint.parent), tag=checkpoint.name, exclude_frozen_parameters=True
    )
