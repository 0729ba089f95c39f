"""The data section of the run config (`data.*`): the tasks and how they are mixed, tokenized and checked.

It lives beside the data code that reads it, so `mtft.data` needs nothing from `mtft.config`; config/ composes it
into the run's TrainConfig. Each dataclass checks its own fields and raises `ConfigError(field, problem)`; the
converter prefixes the dotted path (e.g. `data.tasks[0].format`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mtft.data.formats import FORMATS
from mtft.errors import check, check_choice

GENERATION_METRICS = ("exact_match", "accuracy", "token_f1", "rouge_l", "chrf")  # eval/metrics.py computes them


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
    # mtft-eval's generation metrics for this task (eval/metrics.py); None: exact_match and token_f1
    metrics: list[str] | None = None
    answer_pattern: str | None = None  # a regex picking the answer out of an output, for metric `accuracy`

    def __post_init__(self) -> None:
        self.fields = self.fields or {}
        check(self.name not in ("", "???"), "name", "every task needs a name")
        unknown = [m for m in self.metrics or [] if m not in GENERATION_METRICS]
        check(not unknown, "metrics", f"unknown {unknown}; choose from {', '.join(GENERATION_METRICS)}")
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
