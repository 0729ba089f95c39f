"""The one seam to DeepSpeed: process-group setup and the engine, which owns precision, gradient accumulation,
clipping, the optimizer step, ZeRO and checkpoints. There is no second, non-DeepSpeed path."""

from __future__ import annotations

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
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": cfg.deepspeed.precision == "bf16"}
    ds["fp16"] = {**ds.get("fp16", {}), "enabled": cfg.deepspeed.precision == "fp16"}
    ds["zero_allow_untested_optimizer"] = True  # our AdamW is a plain torch optimizer
    return ds


def _unchecked_by_deepspeed(cfg: TrainConfig) -> bool:
    """Plain fp32 without ZeRO: the one setup where DeepSpeed steps the optimizer without an overflow check."""
    return cfg.deepspeed.stage == 0 and cfg.deepspeed.precision == "fp32"


def build_engine(model: nn.Module, cfg: TrainConfig, world_size: int):
    """AdamW over the trainable parameters and a transformers LR schedule, handed to the DeepSpeed engine.
    With the optimizer offloaded, DeepSpeed's vectorised CPU AdamW (JIT-compiled on first use) does the step.
    In plain fp32 without ZeRO, an AdamW that skips non-finite steps itself (training/guard.py)."""
    import deepspeed
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    t = cfg.trainer
    trainable = [p for p in model.parameters() if p.requires_grad]
    if _unchecked_by_deepspeed(cfg):
        optimizer = FiniteCheckedAdamW(trainable, t.max_grad_norm, lr=t.lr, weight_decay=t.weight_decay)
    else:
        adamw = DeepSpeedCPUAdam if cfg.deepspeed.offload_optimizer else torch.optim.AdamW
        optimizer = adamw(trainable, lr=t.lr, weight_decay=t.weight_decay)
    scheduler = get_scheduler(
        t.lr_scheduler, optimizer, num_warmup_steps=t.warmup_steps, num_training_steps=t.max_steps
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg, world_size)
    )
    return engine
