"""Typed configuration. Defaults live here and only here; YAML under configs/ selects and overrides them.

Each dataclass checks its own fields in `__post_init__` and raises `ConfigError(field, problem)`; the converter
prefixes the dotted path, so a message always names the full key (e.g. `trainer.lr`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers.trainer_utils import SchedulerType

from mtft.config.errors import ConfigError
from mtft.data.formats import FORMATS


def check(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(key, problem)


def check_choice(value: str, key: str, choices: tuple[str, ...]) -> None:
    check(value in choices, key, f"must be one of {', '.join(choices)}; got '{value}'")


@dataclass
class TinyModelConfig:
    """A Llama-architecture model with random weights, built from this config when no checkpoint is given."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    max_position_embeddings: int = 1024
    # Larger than the usual 0.02: the embedding is tied and frozen under LoRA, and at 0.02 its norm caps the
    # logits so low that no adapter can fit the demo tasks.
    initializer_range: float = 0.1
    init_seed: int = 0  # the base weights are a function of this seed, so a checkpoint can be reloaded exactly

    def __post_init__(self) -> None:
        sizes = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size")
        for key in (*sizes, "max_position_embeddings"):
            check(getattr(self, key) > 0, key, f"must be > 0, got {getattr(self, key)}")
        check(self.hidden_size % self.num_heads == 0, "num_heads", "must divide hidden_size")
        head_dim = self.hidden_size // self.num_heads
        # rotary embeddings rotate pairs of dimensions: an odd head size fails at the first forward
        check(head_dim % 2 == 0, "num_heads", f"hidden_size / num_heads must be even (rotary), got {head_dim}")
        check(self.num_heads % self.num_kv_heads == 0, "num_kv_heads", "must divide num_heads")
        # a standard deviation: 0 gives all-zero weights that cannot break symmetry; transformers rejects > 1
        check(0 < self.initializer_range <= 1, "initializer_range", f"must be in (0, 1], got {self.initializer_range}")
        check(self.init_seed >= 0, "init_seed", f"must be >= 0, got {self.init_seed}")


@dataclass
class ModelConfig:
    name_or_path: str | None = None  # local directory or hub id; None builds the tiny random model below
    trust_remote_code: bool = False
    attn_implementation: str = "sdpa"  # eager | sdpa | flash_attention_2
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)

    def __post_init__(self) -> None:
        check_choice(self.attn_implementation, "attn_implementation", ("eager", "sdpa", "flash_attention_2"))


@dataclass
class TaskSpec:
    name: str = "???"
    path: str = "???"  # a JSONL/JSON/Parquet/CSV file, a glob, a directory, a saved `datasets` dir, or a hub id
    format: str = "auto"  # auto | messages | sharegpt | chat_rounds | alpaca | prompt_response | text
    weight: float | None = None  # used by data.mixing=weights
    val_fraction: float | None = None  # overrides data.val_fraction for this task
    val_path: str | None = None  # a separate validation source; then nothing is split off `path`
    max_samples: int | None = None  # keep the first N usable samples; later records are not read
    fields: dict[str, str] | None = None  # {our field: your column}, e.g. {instruction: question, output: answer}

    def __post_init__(self) -> None:
        self.fields = self.fields or {}
        check(self.name not in ("", "???"), "name", "every task needs a name")
        check(self.path not in ("", "???"), "path", f"task '{self.name}' needs a path")
        check_choice(self.format, "format", ("auto", *FORMATS))
        check(self.weight is None or self.weight >= 0, "weight", f"must be >= 0, got {self.weight}")
        if self.val_fraction is not None:
            check(0 < self.val_fraction < 1, "val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        check(self.max_samples is None or self.max_samples > 0, "max_samples", f"must be > 0, got {self.max_samples}")


MIXINGS = ("natural", "uniform", "temperature", "weights")
OVERLONG_POLICIES = ("drop", "truncate", "error")
BAD_RECORD_POLICIES = ("error", "drop")


@dataclass
class DataConfig:
    tasks: list[TaskSpec] = field(default_factory=list)
    mixing: str = "natural"  # natural (∝ size) | uniform | temperature (∝ size^(1/T)) | weights (task.weight)
    temperature: float = 2.0
    max_seq_len: int = 256
    packing: bool = False  # pack each micro-batch's samples into rows of max_seq_len (micro_batch_size counts samples)
    val_fraction: float = 0.1
    max_val_samples: int = 128  # per task: validation runs every eval_steps and must stay cheap
    overlong: str = "drop"  # what to do with a sample longer than max_seq_len: drop | truncate | error
    train_on_prompt: bool = False
    bad_records: str = "error"  # a malformed record: error (names file, line, field) | drop (counted per reason)
    num_proc: int = 4  # datasets.map workers for tasks of 20k+ records (tokenized once, cached by data + tokenizer)

    def __post_init__(self) -> None:
        check(len(self.tasks) > 0, "tasks", "list at least one task (name, path)")
        names = [t.name for t in self.tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        check(not dupes, "tasks", f"duplicate task names: {', '.join(dupes)}")
        check_choice(self.mixing, "mixing", MIXINGS)
        check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        if self.mixing == "weights":
            missing = [t.name for t in self.tasks if t.weight is None]
            check(not missing, "mixing", f"mixing=weights needs a weight on every task; missing on {missing}")
            check(sum(t.weight for t in self.tasks) > 0, "mixing", "task weights sum to zero")
        check(self.max_seq_len >= 8, "max_seq_len", f"must be >= 8, got {self.max_seq_len}")
        check(0 < self.val_fraction < 1, "val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        check(self.max_val_samples > 0, "max_val_samples", f"must be > 0, got {self.max_val_samples}")
        check_choice(self.overlong, "overlong", OVERLONG_POLICIES)
        check_choice(self.bad_records, "bad_records", BAD_RECORD_POLICIES)
        check(self.num_proc > 0, "num_proc", f"must be > 0, got {self.num_proc}")

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]


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
    logging_steps: int = 20
    max_bad_steps: int = 5  # skipped steps (non-finite loss or gradient) in a row before the run stops
    seed: int = 42
    resume: str | None = None  # None, "auto" (newest checkpoint in output_dir) or a checkpoint path
    # resume even though the data config or seed changed: weights, optimizer and step kept; sampler, balancer restart
    resume_allow_changes: bool = False

    def __post_init__(self) -> None:
        for key in ("max_steps", "micro_batch_size", "grad_accum_steps", "eval_steps", "eval_batch_size"):
            check(getattr(self, key) > 0, key, f"must be > 0, got {getattr(self, key)}")
        check(self.eval_generations >= 0, "eval_generations", f"must be >= 0, got {self.eval_generations}")
        check(self.max_new_tokens > 0, "max_new_tokens", f"must be > 0, got {self.max_new_tokens}")
        check(self.logging_steps > 0, "logging_steps", f"must be > 0, got {self.logging_steps}")
        check(self.max_bad_steps > 0, "max_bad_steps", f"must be > 0, got {self.max_bad_steps}")
        check(self.lr > 0, "lr", f"learning rate must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        check(self.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0, got {self.max_grad_norm}")
        check(self.save_steps >= 0, "save_steps", f"must be >= 0, got {self.save_steps}")
        check(self.save_total_limit >= 0, "save_total_limit", f"must be >= 0, got {self.save_total_limit}")
        check(not self.resume_allow_changes or self.resume, "resume_allow_changes", "applies only with trainer.resume")
        check_choice(self.lr_scheduler, "lr_scheduler", tuple(s.value for s in SchedulerType))


@dataclass
class DeepSpeedConfig:
    stage: int = 0  # ZeRO stage
    precision: str = "fp32"  # fp32 | bf16 | fp16
    offload_optimizer: bool = False  # optimizer state and step on the CPU (ZeRO-Offload; stage 1-3)
    offload_params: bool = False  # parameters on the CPU between uses (ZeRO-Infinity; stage 3 only)
    config_file: str | None = None  # a user's own DeepSpeed JSON; batch sizes and clipping are still filled from ours

    def __post_init__(self) -> None:
        check(self.stage in (0, 1, 2, 3), "stage", f"ZeRO stage must be 0, 1, 2 or 3, got {self.stage}")
        check_choice(self.precision, "precision", ("fp32", "bf16", "fp16"))
        check(not self.offload_optimizer or self.stage > 0, "offload_optimizer", "needs ZeRO stage 1, 2 or 3")
        check(not self.offload_params or self.stage == 3, "offload_params", "needs ZeRO stage 3")


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb | tensorboard (metrics.jsonl is written whatever the choice)
    project: str = "mtft"  # W&B project
    entity: str | None = None  # W&B team or user
    run_name: str | None = None
    group: str | None = None  # W&B group; a -m sweep sets it to the sweep's directory name when unset
    tags: list[str] = field(default_factory=list)
    mode: str = "online"  # online | offline | disabled (WANDB_MODE in the environment wins)
    peak_tflops: float | None = None  # per device, for MFU; unset: looked up for known GPUs at bf16/fp16
    progress: str = "auto"  # auto (a bar on a terminal, plain lines otherwise) | bar | lines

    def __post_init__(self) -> None:
        check_choice(self.name, "name", ("none", "wandb", "tensorboard"))
        check_choice(self.mode, "mode", ("online", "offline", "disabled"))
        check_choice(self.progress, "progress", ("auto", "bar", "lines"))
        check(self.peak_tflops is None or self.peak_tflops > 0, "peak_tflops", f"must be > 0, got {self.peak_tflops}")
