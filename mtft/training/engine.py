"""The one seam to DeepSpeed: process-group setup and the engine, which owns gradient accumulation, ZeRO,
offload and checkpoints. `Engine` is what the rest of mtft holds; nothing else calls a DeepSpeed method.

Three optimizer paths, all inside a DeepSpeed engine:
- the lean step (ZeRO-0 in bf16 or fp32): DeepSpeed runs the module as it is and calls mtft's `MasterAdamW`
  (training/optimizer.py), which clips, tests and skips on the device, in a handful of ops whatever the number of
  tensors; the engine's per-bucket gradient all-reduce is off (the optimizer sums one flat buffer);
- ZeRO-1/2 in bf16 or fp32 with torch AdamW on the device: DeepSpeed's ZeRO optimizer (flat partitions, reduction,
  all-gather) around mtft's `GuardedAdamW`, with DeepSpeed's own norm and overflow check, which read the host,
  turned off: the guarded optimizer decides on the device here too;
- ZeRO-3, fp16, offload and DeepSpeed's FusedAdam: DeepSpeed's own optimizers (flat buffers, overflow check, loss
  scaling) around a fused torch AdamW.

Everything else asks this module (and the parameter views in mtft/distributed.py) rather than DeepSpeed: whether
parameters are sharded, gathering them, consolidating a sharded model, loading straight into shards, and whether
generation is collective. A test holds every DeepSpeed import and engine internal to these two files."""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers import get_scheduler

from mtft.config.sections import TrainerConfig
from mtft.config.train import TrainConfig
from mtft.distributed import start_process_group
from mtft.errors import ConfigError
from mtft.training.guard import poison_if_nonfinite
from mtft.training.model_runner import PlainRunner
from mtft.training.optimizer import GuardedAdamW, MasterAdamW


def init_distributed(collective_timeout: float = TrainerConfig.collective_timeout) -> tuple[int, int]:
    """Join (or, with no launcher, create) the process group, whose collectives give up on a peer after
    `collective_timeout` seconds; returns (rank, world size).

    A plain `mtft-train` is a one-process "launch": without RANK/WORLD_SIZE/MASTER_* DeepSpeed would try MPI
    discovery and fail, so they are filled in here. On a machine without CUDA, DS_ACCELERATOR=cpu and gloo.
    mtft joins the group itself (distributed.start_process_group: torchrun's restarts need it), then DeepSpeed
    adopts it.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    deepspeed = _deepspeed()
    if not dist.is_initialized():
        backend, timeout = "nccl" if torch.cuda.is_available() else "gloo", timedelta(seconds=collective_timeout)
        start_process_group(backend, timeout)
        deepspeed.init_distributed(dist_backend=backend, verbose=False, timeout=timeout)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


_TORCH_LINEAR = torch.nn.functional.linear  # torch's own, before DeepSpeed can replace it


def release_torch() -> None:
    """Undo what DeepSpeed leaves patched in torch once a ZeRO-3 model has been built: its memory-efficient
    `torch.nn.functional.linear` wrapper stays installed for the rest of the process. A run's cleanup puts torch's
    back, so whatever the process runs next (another run, an evaluation, a profile) computes with torch's own."""
    torch.nn.functional.linear = _TORCH_LINEAR


def _deepspeed():
    """DeepSpeed, imported so that its communication backend skips the shared-memory op on a CPU.

    Why: the op serves only DeepSpeed-Inference's `inference_all_reduce`, which training never calls, yet each
    process JIT-builds or re-checks it under a lock file in ~/.cache/torch_extensions. A process killed while it
    holds that lock (kill -9, a preemption, a timeout) leaves it behind, and every later DeepSpeed start on the
    machine waits for it forever. Checking the op also probes every DeepSpeed op with compiler runs."""
    import deepspeed

    if not torch.cuda.is_available():
        ops = vars(deepspeed.ops)
        ops.setdefault("__compatible_ops__", {})["deepspeed_shm_comm"] = False
    return deepspeed


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
        # mtft's guarded optimizers clip themselves, with the norm they also test (training/optimizer.py)
        gradient_clipping=0.0 if guards_on_device(cfg) else t.max_grad_norm,
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
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": precision == "bf16" and not is_lean(cfg)}
    ds["fp16"] = {**ds.get("fp16", {}), "enabled": precision == "fp16"}
    if guards_on_device(cfg) and not is_lean(cfg):  # GuardedAdamW computes and tests the norm on the device
        zero["compute_grad_norm"] = False
        ds["bf16"]["check_grad_overflow"] = False
    ds["zero_allow_untested_optimizer"] = True  # our AdamW is a plain torch optimizer
    return ds


def is_lean(cfg: TrainConfig) -> bool:
    """ZeRO-0 in bf16 or fp32: the lean step (MasterAdamW) instead of DeepSpeed's per-tensor ZeRO-0 wrappers."""
    return cfg.deepspeed.stage == 0 and resolve_precision(cfg.deepspeed.precision) in ("bf16", "fp32")


def guards_on_device(cfg: TrainConfig) -> bool:
    """Whether mtft's optimizer clips and guards the step on the device: the lean step, and ZeRO-1/2 in bf16 or fp32
    with torch AdamW where the gradients are (DeepSpeed's own checks serve fp16's loss scaling, offload and
    FusedAdam)."""
    zero_1_2 = cfg.deepspeed.stage in (1, 2) and cfg.trainer.optimizer == "adamw"
    on_device = resolve_precision(cfg.deepspeed.precision) in ("bf16", "fp32") and not cfg.deepspeed.offload_optimizer
    return is_lean(cfg) or (zero_1_2 and on_device)


def optimizer_label(optimizer: Any) -> str:
    """The class that steps, what it wraps (DeepSpeed's ZeRO optimizers wrap a torch one) and whether the torch
    one is fused: for mtft-bench ops, which reports it beside each count."""
    inner = getattr(optimizer, "optimizer", None)
    fused = " (fused)" if getattr(inner or optimizer, "defaults", {}).get("fused") else ""
    return type(optimizer).__name__ + (f" around {type(inner).__name__}" if inner is not None else "") + fused


class Engine:
    """The DeepSpeed engine as the training step uses it: forward, backward, the step's outcome on the device, the
    LR schedule, checkpoints; a `ModelRunner` (training/model_runner.py) for validation. `ds` is DeepSpeed's
    engine, for this module's own functions only. `guarded_optimizer`: mtft's optimizer that clips, tests and
    skips the step on the device (training/optimizer.py), or None where DeepSpeed's own optimizer steps."""

    def __init__(self, ds, schedule, guarded_optimizer: GuardedAdamW | None):
        self.ds, self.schedule, self.guarded_optimizer = ds, schedule, guarded_optimizer
        self.module, self.device, self.world_size = ds.module, ds.device, ds.world_size
        self.rank = ds.global_rank  # this process's place among the data-parallel ranks
        lean = isinstance(guarded_optimizer, MasterAdamW)
        if lean:
            ds.enable_backward_allreduce = False  # per bucket and per tensor; MasterAdamW sums one flat buffer
        # The step's loss is normalised over all ranks' tokens, so gradients are summed over ranks. DeepSpeed's
        # reductions average: their backward is scaled by the world size. MasterAdamW's own all-reduce sums.
        self.loss_scale = 1 if lean else ds.world_size

    def __call__(self, *args, **kwargs):
        return self.ds(*args, **kwargs)

    def parameters(self):
        return self.module.parameters()

    @property
    def training(self) -> bool:
        return self.module.training

    def train(self, mode: bool = True) -> None:
        self.ds.train(mode)

    def eval(self) -> None:
        self.ds.eval()

    def backward(self, loss: torch.Tensor) -> None:
        """One micro-batch's backward; at the step's last micro-batch, the optimizer step too. A non-finite loss
        skips the step (training/guard.py): mtft's guarded optimizer watches it, DeepSpeed's overflow check sees
        the NaN gradients `poison_if_nonfinite` gives it."""
        if self.guarded_optimizer is not None:
            self.guarded_optimizer.watch_loss(loss)
        else:
            loss = poison_if_nonfinite(loss)
        loss = loss * self.loss_scale if self.loss_scale != 1 else loss
        self.ds.backward(loss, scale_wrt_gas=False)
        self.ds.step()

    @property
    def global_steps(self) -> int:
        """Optimizer steps taken (skipped ones included), restored by a resume."""
        return self.ds.global_steps

    def gradient_accumulation_steps(self) -> int:
        return self.ds.gradient_accumulation_steps()

    def outcome(self) -> torch.Tensor:
        """[gradient norm before clipping (NaN where none is computed), 1.0 if the update was skipped], on the
        device. mtft's guarded optimizers leave it on the device with no sync; DeepSpeed's own have already read
        their overflow flag on the host, and their norm stays where it is."""
        if self.guarded_optimizer is not None:
            return torch.stack([self.guarded_optimizer.grad_norm, self.guarded_optimizer.skipped])
        norm = self.ds.get_global_grad_norm()
        skipped = torch.tensor(0.0 if self.ds.was_step_applied() else 1.0, device=self.device)
        if not isinstance(norm, torch.Tensor):
            norm = torch.tensor(math.nan if norm is None else norm, device=self.device)
        return torch.stack([norm.to(self.device, torch.float32).reshape(()), skipped])

    @property
    def reports_grad_norm(self) -> bool:
        return self.guarded_optimizer is not None or self.ds.get_global_grad_norm() is not None

    def finish_step(self, applied: bool) -> None:
        """After the host has read the step's outcome: with mtft's guarded optimizers the LR schedule moves only
        for an applied step (DeepSpeed steps its own schedule, already skipped on overflow)."""
        if self.guarded_optimizer is not None and applied:
            self.schedule.step()

    def optimizer_name(self) -> str:
        return optimizer_label(self.ds.optimizer)

    def lr(self) -> float:
        return self.ds.get_lr()[0]

    def zero_optimization_stage(self) -> int:
        return self.ds.zero_optimization_stage()

    def save_checkpoint(self, directory: Path, tag: str, client_state: dict[str, Any]) -> None:
        self.ds.save_checkpoint(str(directory), tag=tag, client_state=client_state, exclude_frozen_parameters=True)

    def load_checkpoint(self, directory: Path, tag: str) -> dict[str, Any]:
        """The client state; not strict: checkpoints leave out the frozen base, which the model already holds."""
        _, client_state = self.ds.load_checkpoint(str(directory), tag=tag, load_module_strict=False)
        return client_state


class _DeferredSchedule:
    """What DeepSpeed holds as the LR schedule where mtft's optimizer guards the step (DeepSpeed sees no skip): it
    saves and loads the real one's state in its checkpoints, but its `step()` (which DeepSpeed calls after every
    optimizer step) does nothing; `Engine` steps the real one once the step is known to be applied."""

    def __init__(self, schedule):
        self.schedule = schedule

    def step(self, *args, **kwargs) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state)

    def get_last_lr(self) -> list[float]:
        return self.schedule.get_last_lr()


def build_engine(model: nn.Module, cfg: TrainConfig, world_size: int) -> Engine:
    """AdamW over the trainable parameters and a transformers LR schedule, in a DeepSpeed engine.
    ZeRO-0 (bf16, fp32): the lean step's MasterAdamW. ZeRO-1/2 (bf16, fp32): GuardedAdamW inside DeepSpeed's ZeRO
    optimizer. ZeRO-3 and fp16: fused torch AdamW inside DeepSpeed's optimizers. With the optimizer offloaded,
    DeepSpeed's vectorised CPU AdamW (JIT-compiled on first use)."""
    deepspeed = _deepspeed()
    from deepspeed.accelerator import get_accelerator
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    t = cfg.trainer
    if t.optimizer == "fused_adamw" and cfg.deepspeed.offload_optimizer:
        raise ConfigError("trainer.optimizer", "fused_adamw needs the optimizer on the GPU (no optimizer offload)")
    if t.optimizer == "fused_adamw" and not torch.cuda.is_available():
        raise ConfigError("trainer.optimizer", "fused_adamw is DeepSpeed's CUDA FusedAdam; without a GPU use adamw")
    guarded = None
    trainable = [p for p in model.parameters() if p.requires_grad]  # the same objects after the casts and moves below
    if is_lean(cfg):
        if resolve_precision(cfg.deepspeed.precision) == "bf16":
            for param in model.parameters():  # as DeepSpeed's bf16 engine does: parameters, not buffers
                if param.is_floating_point() and param.dtype != torch.bfloat16:
                    param.data = param.data.to(torch.bfloat16)
        model.to(get_accelerator().current_device_name())  # the master weights are made where they will live
        optimizer = guarded = MasterAdamW(trainable, t.max_grad_norm, lr=t.lr, weight_decay=t.weight_decay)
    elif guards_on_device(cfg):  # ZeRO-1/2: its parameters are this rank's partitions, so the norm is summed
        optimizer = guarded = GuardedAdamW(
            trainable, t.max_grad_norm, lr=t.lr, weight_decay=t.weight_decay, sum_norm_over_ranks=True
        )
    elif cfg.deepspeed.offload_optimizer:
        optimizer = DeepSpeedCPUAdam(trainable, lr=t.lr, weight_decay=t.weight_decay)
    elif t.optimizer == "fused_adamw":
        from deepspeed.ops.adam import FusedAdam

        optimizer = FusedAdam(trainable, lr=t.lr, weight_decay=t.weight_decay, adam_w_mode=True)
    else:  # fused: one kernel for every tensor, and no host read of its step counters on CUDA
        optimizer = torch.optim.AdamW(trainable, lr=t.lr, weight_decay=t.weight_decay, fused=True)
    schedule = get_scheduler(
        t.lr_scheduler, optimizer, num_warmup_steps=t.warmup_steps, num_training_steps=t.max_steps
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=_DeferredSchedule(schedule) if guarded is not None else schedule,
        config=deepspeed_config(cfg, world_size),
    )
    return Engine(engine, schedule, guarded)


def partitioned_for_inference(model: nn.Module, cfg: TrainConfig, world_size: int) -> PlainRunner:
    """The model's parameters partitioned over the ranks by ZeRO-3, for evaluation: run by an engine with no
    optimizer (DeepSpeed's ZeRO-3 inference), whose forwards gather each layer's shards and free them after. The run's
    DeepSpeed settings (its config file, parameter offload) at stage 3, in the precision `model` was loaded in,
    so the numbers are those of the unpartitioned model."""
    deepspeed = _deepspeed()
    config = deepspeed_config(cfg, world_size)
    config["zero_optimization"]["stage"] = 3
    config["zero_optimization"].pop("offload_optimizer", None)  # there is no optimizer
    config["bf16"]["enabled"] = next(model.parameters()).dtype == torch.bfloat16
    config["fp16"]["enabled"] = False
    engine, _, _, _ = deepspeed.initialize(model=model, config=config)
    return PlainRunner(engine, engine.module, engine.device)


def is_sharded(engine: Engine) -> bool:
    """ZeRO-3: every rank holds only a shard of each parameter."""
    return engine.zero_optimization_stage() == 3


def generation_is_collective(engine: Engine) -> bool:
    """Under ZeRO-3 with several ranks each forward gathers shards from all ranks, so all generate in step."""
    return is_sharded(engine) and engine.world_size > 1


@contextlib.contextmanager
def gathered(engine: Engine, params: list[nn.Parameter]):
    """The whole `params` on every rank inside the block (collective under ZeRO-3; nothing to do otherwise)."""
    if not is_sharded(engine):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def consolidated_state_dict(engine: Engine) -> dict[str, torch.Tensor] | None:
    """The whole model's 16-bit state dict on rank 0 (None elsewhere), gathered one layer at a time into CPU
    memory. A private DeepSpeed method, as accelerate also uses; the ZeRO-3 full-fine-tune tests would catch a
    rename."""
    return engine.ds._zero3_consolidated_16bit_state_dict()


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
