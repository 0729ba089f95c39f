"""The trainer and DeepSpeed sections of the run config. Defaults live here and only here; YAML selects and overrides
them. The other sections' dataclasses live beside their components (`mtft.data.config`, `mtft.models`,
`mtft.logging.config`, each adapter and balancer); config/train.py composes them all into TrainConfig.

Each dataclass checks its own fields in `__post_init__` and raises `ConfigError(field, problem)`; the converter
prefixes the dotted path, so a message always names the full key (e.g. `trainer.lr`).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers.trainer_utils import SchedulerType

from mtft.errors import check, check_choice


@dataclass
class TrainerConfig:
    output_dir: str = "runs/${now:%Y-%m-%d_%H-%M-%S}"
    max_steps: int = 1000  # optimizer steps
    micro_batch_size: int = 16  # samples per micro-batch per rank
    grad_accum_steps: int = 1
    lr: float = 3e-3
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"  # any transformers scheduler name
    warmup_steps: int = 10
    max_grad_norm: float = 1.0  # 0 turns clipping off
    eval_steps: int = 100  # per-task validation every N optimizer steps (and at start and end)
    eval_batch_size: int = 32
    eval_generations: int = 2  # per task at each evaluation: greedy outputs beside prompt and reference; 0 = none
    max_new_tokens: int = 64  # cap on each of those generations
    save_steps: int = 0  # checkpoint every N steps; 0 saves only at the end
    save_total_limit: int = 0  # keep only the newest N complete checkpoints (never the one resumed from); 0 keeps all
    # stop after N evaluations (every eval_steps) without improvement of early_stopping_metric; 0 never stops
    early_stopping_patience: int = 0
    # val_loss: the tasks' mean validation loss (lower is better); or TASK/METRIC, a metric of that task's sample
    # generations (e.g. french/exact_match; higher is better; needs eval_generations > 0)
    early_stopping_metric: str = "val_loss"
    early_stopping_min_delta: float = 0.0  # an improvement must exceed it
    # also checkpoint each evaluation that is the best so far, and keep that checkpoint (save_total_limit spares it)
    keep_best: bool = False
    logging_steps: int = 20
    max_bad_steps: int = 5  # skipped steps (non-finite loss or gradient) in a row before the run stops
    seed: int = 42
    resume: str | None = None  # None, "auto" (newest checkpoint in output_dir) or a checkpoint path
    # resume even though the data config or seed changed: weights, optimizer and step kept; sampler, balancer restart
    resume_allow_changes: bool = False
    # full: the model's logits, then the loss; chunked: the output head and loss a chunk of tokens at a time, no
    # full logits in memory (training/cross_entropy.py); not under ZeRO-3
    cross_entropy: str = "full"
    # recompute each decoder layer's activations in the backward instead of keeping them: less memory, ~1/3 more time
    gradient_checkpointing: bool = False
    # torch.compile each decoder layer (in place; one compilation serves every layer): fewer, fused kernels
    compile: bool = False
    # adamw: torch's AdamW; fused_adamw: DeepSpeed's FusedAdam (CUDA only; its kernel builds on first use), with
    # which DeepSpeed's bf16/fp16 ZeRO-0 path keeps one flat fp32 master copy instead of one per tensor
    optimizer: str = "adamw"
    # seconds a rank waits for its peers in a collective before the run ends (a peer hung or lost); raise it when a
    # save to a slow shared filesystem, or a rank's first compile, can keep the others waiting longer. Rank 0's
    # solo work (the tokenisation cache) has its own allowance
    collective_timeout: float = 600.0

    def __post_init__(self) -> None:
        for key in ("max_steps", "micro_batch_size", "grad_accum_steps", "eval_steps", "eval_batch_size"):
            check(getattr(self, key) > 0, key, f"must be > 0, got {getattr(self, key)}")
        check(self.eval_generations >= 0, "eval_generations", f"must be >= 0, got {self.eval_generations}")
        check(self.max_new_tokens > 0, "max_new_tokens", f"must be > 0, got {self.max_new_tokens}")
        check(self.logging_steps > 0, "logging_steps", f"must be > 0, got {self.logging_steps}")
        check(self.max_bad_steps > 0, "max_bad_steps", f"must be > 0, got {self.max_bad_steps}")
        timeout = self.collective_timeout
        check(timeout > 0, "collective_timeout", f"seconds, must be > 0, got {timeout}")
        check(self.lr > 0, "lr", f"learning rate must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        check(self.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0, got {self.max_grad_norm}")
        check(self.save_steps >= 0, "save_steps", f"must be >= 0, got {self.save_steps}")
        check(self.save_total_limit >= 0, "save_total_limit", f"must be >= 0, got {self.save_total_limit}")
        patience, delta = self.early_stopping_patience, self.early_stopping_min_delta
        check(patience >= 0, "early_stopping_patience", f"must be >= 0, got {patience}")
        check(delta >= 0, "early_stopping_min_delta", f"must be >= 0, got {delta}")
        metric = self.early_stopping_metric
        check(
            metric == "val_loss" or metric.count("/") == 1,
            "early_stopping_metric",
            f"val_loss or TASK/METRIC (e.g. french/exact_match), got {metric!r}",
        )
        check(not self.resume_allow_changes or self.resume, "resume_allow_changes", "applies only with trainer.resume")
        check_choice(self.lr_scheduler, "lr_scheduler", tuple(s.value for s in SchedulerType))
        check_choice(self.cross_entropy, "cross_entropy", ("full", "chunked"))
        check_choice(self.optimizer, "optimizer", ("adamw", "fused_adamw"))


@dataclass
class DeepSpeedConfig:
    stage: int = 0  # ZeRO stage
    precision: str = "auto"  # auto (bf16 on a GPU that has it, else fp32) | fp32 | bf16 | fp16
    offload_optimizer: bool = False  # optimizer state and step on the CPU (ZeRO-Offload; stage 1-3)
    offload_params: bool = False  # parameters on the CPU between uses (ZeRO-Infinity; stage 3 only)
    config_file: str | None = None  # a user's own DeepSpeed JSON; batch sizes and clipping are still filled from ours

    def __post_init__(self) -> None:
        check(self.stage in (0, 1, 2, 3), "stage", f"ZeRO stage must be 0, 1, 2 or 3, got {self.stage}")
        check_choice(self.precision, "precision", ("auto", "fp32", "bf16", "fp16"))
        check(not self.offload_optimizer or self.stage > 0, "offload_optimizer", "needs ZeRO stage 1, 2 or 3")
        check(not self.offload_params or self.stage == 3, "offload_params", "needs ZeRO stage 3")
