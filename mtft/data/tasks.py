"""Task files to tokenized train/validation samples, with a per-task account of every line read.

Each task's report satisfies `samples + sum(dropped.values()) == lines_read`: nothing is lost silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from mtft.config.errors import DataError
from mtft.config.schema import DataConfig, TaskSpec
from mtft.data.formats import detect_format, read_jsonl, to_messages
from mtft.data.tokenize import IGNORE, TemplateError, tokenize_messages


@dataclass
class Sample:
    input_ids: list[int]
    labels: list[int]
    task_id: int


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
    samples: list[Sample] = []
    dropped: Counter[str] = Counter()
    truncated = lines_read = 0
    formats: set[str] = set()
    for line, record in read_jsonl(spec.path):
        lines_read += 1
        fmt = detect_format(record, spec.path, line) if spec.format == "auto" else spec.format
        formats.add(fmt)
        messages = to_messages(record, fmt, spec.path, line)
        try:
            input_ids, labels = tokenize_messages(tokenizer, messages, cfg.train_on_prompt)
        except TemplateError as err:
            raise DataError(spec.path, line, "messages", str(err)) from None
        was_truncated = False
        if len(input_ids) > cfg.max_seq_len:
            if cfg.overlong == "error":
                raise DataError(
                    spec.path, line, "messages", f"is {len(input_ids)} tokens, over data.max_seq_len={cfg.max_seq_len}"
                )
            if cfg.overlong == "drop":
                dropped["too_long"] += 1
                continue
            was_truncated = True
            input_ids, labels = input_ids[: cfg.max_seq_len], labels[: cfg.max_seq_len]
        if all(label == IGNORE for label in labels[1:]):  # the first label is never predicted
            dropped["no_trainable_tokens"] += 1
            continue
        truncated += was_truncated  # counted among kept samples only, so truncated <= samples
        samples.append(Sample(input_ids, labels, task_id))

    if len(samples) < 2:
        why = f" (of {lines_read} lines, dropped: {dict(dropped)})" if dropped else ""
        raise DataError(
            spec.path, None, None, f"task '{spec.name}' has {len(samples)} usable samples{why}; it needs >= 2"
        )
    train, val = _split(samples, spec.val_fraction or cfg.val_fraction, cfg.max_val_samples, seed, task_id)
    lengths = np.array([len(s.input_ids) for s in samples])
    report = {
        "path": spec.path,
        "format": ",".join(sorted(formats)),
        "lines_read": lines_read,
        "samples": len(samples),
        "train_samples": len(train),
        "val_samples": len(val),
        "train_tokens": int(sum(len(s.input_ids) for s in train)),
        "mean_length": round(float(lengths.mean()), 1),
        "max_length": int(lengths.max()),
        "dropped": dict(dropped),
        "truncated": truncated,
    }
    return TaskData(spec.name, train, val, report)


def _split(samples: list[Sample], fraction: float, max_val: int, seed: int, task_id: int):
    """A seeded, disjoint train/validation split; validation is capped so evaluation stays cheap."""
    order = np.random.default_rng([seed, task_id]).permutation(len(samples))
    n_val = min(max_val, max(1, round(len(samples) * fraction)), len(samples) - 1)
    return [samples[i] for i in order[n_val:]], [samples[i] for i in order[:n_val]]
