"""Records to token ids with `datasets.map` (multiprocess for large tasks), cached on disk.

The cache holds, per record in file order, either its tokens or why it was rejected, keyed by the source
(paths, sizes, modification times, or a dataset's fingerprint), the tokenizer and the settings that change
tokens (format, field mapping, train_on_prompt). Length limits and the bad-record policy are applied after
the cache, so changing `max_seq_len` re-tokenizes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import datasets
from datasets.arrow_writer import ArrowWriter
from datasets.fingerprint import Hasher
from transformers import PreTrainedTokenizerBase

from mtft.data.config import TaskSpec
from mtft.data.formats import detect_format, rename_fields, to_example
from mtft.data.sources import Location, read_records, resolve
from mtft.data.tokenize import TemplateError, tokenize_example
from mtft.errors import DataError

PREPROCESS_VERSION = 2  # 2: prompt_length
PARALLEL_FROM = 20_000  # records; below this, worker start-up costs more than it saves
# A record before tokenizing: where it is, why it could not be parsed (if so), and its JSON.
RAW_COLUMNS = ("path", "line", "unit", "field", "problem", "reason", "record")
RAW_FEATURES = datasets.Features({c: datasets.Value("int64" if c == "line" else "string") for c in RAW_COLUMNS})


def cache_dir() -> Path:
    return Path(os.environ.get("MTFT_CACHE_DIR", Path.home() / ".cache" / "mtft")) / "preprocessed"


def tokenized_records(
    path: str, spec: TaskSpec, tokenizer: PreTrainedTokenizerBase, train_on_prompt: bool, num_proc: int
) -> datasets.Dataset:
    """One row per record read: `input_ids`, `labels`, `prompt_length`, `format`, and for a rejected record its
    DataError fields."""
    sources = resolve(path)
    target = cache_dir() / _cache_key(sources, spec, tokenizer, train_on_prompt)
    if (target / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(target))
    work = target.with_name(f"{target.name}.{os.getpid()}.work")
    try:
        raw = _write_raw(path, sources, work / "raw.arrow")
        tokenized = raw.map(
            _tokenize_row,
            fn_kwargs={
                "tokenizer": tokenizer,
                "fmt": spec.format,
                "fields": spec.fields,
                "train_on_prompt": train_on_prompt,
            },
            remove_columns=["record"],
            num_proc=min(num_proc, os.cpu_count() or 1) if len(raw) >= PARALLEL_FROM else None,
            cache_file_name=str(work / "tokenized.arrow"),  # written a batch at a time, not kept in RAM
            load_from_cache_file=False,  # a stale work file (a crashed run's, same pid) is never taken as output
            desc=f"tokenizing {spec.name}",
        )
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        with _quiet_progress():  # the tokenizing bar is enough; saving is instant
            tokenized.save_to_disk(str(partial))
        del raw, tokenized  # their memory maps, before the files go
    finally:
        shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)  # atomic: a crash never leaves a half-written cache entry in place
    return datasets.load_from_disk(str(target))


def row_error(row: dict[str, Any]) -> DataError | None:
    if not row["reason"]:
        return None
    return DataError(row["path"], row["line"], row["field"] or None, row["problem"], row["reason"], row["unit"])


def _write_raw(path: str, sources: list, file: Path) -> datasets.Dataset:
    """The records, one row each, streamed to an Arrow file on disk and memory-mapped back. A list of every
    record's dict (`Dataset.from_list`) held a whole task's text several times over in RAM: a 200k-record task
    peaked 290 MiB above the baseline before tokenizing began, and its in-memory `map` kept every output too."""
    file.parent.mkdir(parents=True, exist_ok=True)
    with ArrowWriter(features=RAW_FEATURES, path=str(file)) as writer:
        for where, item in read_records(path, sources):
            writer.write(_raw_row(where, item))
        writer.finalize()
    return datasets.Dataset.from_file(str(file))


def _raw_row(where: Location, item: dict | DataError) -> dict[str, Any]:
    row = {"path": where.path, "line": where.line, "unit": where.unit, "field": "", "problem": "", "reason": ""}
    if isinstance(item, DataError):
        row.update(field=item.field or "", problem=item.problem, reason=item.reason)
        return {**row, "record": ""}
    return {**row, "record": json.dumps(item, ensure_ascii=False, default=str)}


def _tokenize_row(row: dict, tokenizer, fmt: str, fields: dict[str, str], train_on_prompt: bool) -> dict[str, Any]:
    out = {"input_ids": [], "labels": [], "prompt_length": 0, "format": ""}
    if row["reason"]:
        return out
    where = Location(row["path"], row["line"], row["unit"])
    try:
        record = rename_fields(json.loads(row["record"]), fields)
        out["format"] = detect_format(record, where) if fmt == "auto" else fmt
        example = to_example(record, out["format"], where)
        try:
            tokenized = tokenize_example(tokenizer, example, train_on_prompt)
            out["input_ids"], out["labels"], out["prompt_length"] = tokenized
        except TemplateError as err:
            raise where.error("messages", str(err), "template") from None
    except DataError as err:
        out.update(field=err.field or "", problem=err.problem, reason=err.reason)
    return out


def _cache_key(sources: list, spec: TaskSpec, tokenizer: PreTrainedTokenizerBase, train_on_prompt: bool) -> str:
    identities = []
    for source in sources:
        if isinstance(source, Path):
            stat = source.stat()
            identities.append((str(source.resolve()), stat.st_size, stat.st_mtime_ns))
        else:  # a loaded Dataset
            identities.append(source._fingerprint)
    settings = [PREPROCESS_VERSION, spec.format, sorted(spec.fields.items()), train_on_prompt]
    tokenizer_id = [Hasher.hash(tokenizer), tokenizer.chat_template or ""]
    return hashlib.sha256(json.dumps([identities, settings, tokenizer_id], default=str).encode()).hexdigest()[:32]


@contextlib.contextmanager
def _quiet_progress():
    was_enabled = not datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.utils.enable_progress_bars()
