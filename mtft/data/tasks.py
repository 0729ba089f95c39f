"""Task sources to tokenized train/validation samples, with a per-task account of every record read.

Tokenizing is data/preprocess.py's (datasets.map, cached); this module applies the per-task policies.

Each task's report satisfies `samples + sum(dropped.values()) == lines_read` (records, for columnar
sources): nothing is lost silently. A validation file (`val_path`) gets the same account under `val`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from mtft.data.config import DataConfig, TaskSpec
from mtft.data.preprocess import row_error, tokenized_records
from mtft.data.tokenize import IGNORE
from mtft.errors import DataError


@dataclass
class Sample:
    input_ids: list[int]
    labels: list[int]
    task_id: int
    prompt_length: int | None = None  # tokens before the first assistant turn's answer; set by tokenizing
    prior: list[float] | None = None  # instance-level routing prior (MoR1E's intuition), when an adapter sets one

    def prompt(self) -> list[int]:
        """Everything before the first assistant turn: what the model sees when asked to answer, so the one text
        that routing priors (MoR1E) and generations are computed from, in training and at inference alike.
        A sample built by hand, without `prompt_length`, ends its prompt at its first trained label."""
        if self.prompt_length is not None:
            return self.input_ids[: self.prompt_length]
        trained = [label != IGNORE for label in self.labels]
        return self.input_ids[: trained.index(True)] if True in trained else list(self.input_ids)


@dataclass
class TaskData:
    name: str
    train: list[Sample]
    val: list[Sample]
    report: dict[str, Any] = field(default_factory=dict)


def load_tasks(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> list[TaskData]:
    return [_load_task(spec, task_id, cfg, tokenizer, seed) for task_id, spec in enumerate(cfg.tasks)]


def _load_task(
    spec: TaskSpec, task_id: int, cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, seed: int
) -> TaskData:
    samples, report = _read_samples(spec.path, spec, task_id, cfg, tokenizer, spec.max_samples)
    if len(samples) < (1 if spec.val_path else 2):
        why = f" (of {report['lines_read']} lines, dropped: {report['dropped']})" if report["dropped"] else ""
        need = 1 if spec.val_path else 2
        raise DataError(
            spec.path, None, None, f"task '{spec.name}' has {len(samples)} usable samples{why}; it needs >= {need}"
        )
    if spec.val_path:
        train = samples
        val, val_report = _read_samples(spec.val_path, spec, task_id, cfg, tokenizer, cfg.max_val_samples)
        if not val:
            raise DataError(spec.val_path, None, None, f"task '{spec.name}' has no usable validation samples")
        report["val"] = val_report
    else:
        train, val = _split(samples, spec.val_fraction or cfg.val_fraction, cfg.max_val_samples, seed, task_id)
    lengths = np.array([len(s.input_ids) for s in samples])
    report.update(
        train_samples=len(train),
        val_samples=len(val),
        train_tokens=int(sum(len(s.input_ids) for s in train)),
        mean_length=round(float(lengths.mean()), 1),
        max_length=int(lengths.max()),
    )
    return TaskData(spec.name, train, val, report)


def _read_samples(
    path: str, spec: TaskSpec, task_id: int, cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, limit: int | None
) -> tuple[list[Sample], dict[str, Any]]:
    """Apply the length and bad-record policies to the tokenized records, in file order, counting every one."""
    rows = tokenized_records(path, spec, tokenizer, cfg.train_on_prompt, cfg.num_proc)
    samples: list[Sample] = []
    dropped: Counter[str] = Counter()
    formats: Counter[str] = Counter()
    truncated = lines_read = 0
    stopped = False
    pool: dict[int, int] = {}
    for row in _rows(rows):
        if limit is not None and len(samples) >= limit:
            stopped = True  # the rest is not used: reported as stopped_at
            break
        lines_read += 1
        input_ids, labels = row["input_ids"], row["labels"]
        error = row_error(row)
        if error is None and len(input_ids) > cfg.max_seq_len and cfg.overlong == "error":
            problem = f"is {len(input_ids)} tokens, over data.max_seq_len={cfg.max_seq_len}"
            error = DataError(row["path"], row["line"], None, problem, "too_long", row["unit"])
        if error is not None:
            if cfg.bad_records == "error":
                raise error
            dropped[error.reason] += 1
            continue
        formats[row["format"]] += 1
        was_truncated = len(input_ids) > cfg.max_seq_len
        if was_truncated and cfg.overlong == "drop":
            dropped["too_long"] += 1
            continue
        input_ids, labels = input_ids[: cfg.max_seq_len], labels[: cfg.max_seq_len]
        if all(label == IGNORE for label in labels[1:]):  # the first label is never predicted
            dropped["no_trainable_tokens"] += 1
            continue
        truncated += was_truncated  # counted among kept samples only, so truncated <= samples
        prompt_length = min(row["prompt_length"], cfg.max_seq_len)
        samples.append(Sample(_pooled(input_ids, pool), _pooled(labels, pool), task_id, prompt_length))
    report = {
        "path": path,
        "format": ",".join(sorted(formats)),
        "lines_read": lines_read,
        "samples": len(samples),
        "dropped": dict(dropped),
        "truncated": truncated,
    }
    if stopped:
        report["stopped_at"] = f"max {limit} samples; later records were not used"
    return samples, report


def _rows(rows: Dataset, batch_size: int = 1024) -> Iterator[dict[str, Any]]:
    """The rows as dicts, converted from Arrow a batch at a time: `for row in dataset` decodes each row through
    its features one by one, and a cached load of 200k short samples took 14 s that way, 6 s in batches."""
    for batch in rows.with_format("arrow").iter(batch_size=batch_size):
        yield from batch.to_pylist()


def _pooled(ids: list[int], pool: dict[int, int]) -> list[int]:
    """`ids` with one shared int object per distinct value. Decoding makes a new 32-byte int for every id outside
    CPython's small-int cache (-5..256): IGNORE, the special tokens, most of a real vocabulary. Pooled, a held
    token costs its 8-byte reference, and 200k short samples hold about half the memory (docs/results/load.md)."""
    ids[:] = map(pool.setdefault, ids, ids)  # in place: the list keeps its exact size
    return ids


def _split(samples: list[Sample], fraction: float, max_val: int, seed: int, task_id: int):
    """A seeded, disjoint train/validation split; validation is capped so evaluation stays cheap."""
    order = np.random.default_rng([seed, task_id]).permutation(len(samples))
    n_val = min(max_val, max(1, round(len(samples) * fraction)), len(samples) - 1)
    return [samples[i] for i in order[n_val:]], [samples[i] for i in order[:n_val]]
