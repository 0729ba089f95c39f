"""Tokenizing through datasets.map, cached by data + tokenizer + token-changing settings."""

from __future__ import annotations

import json
import os

import pytest

from mtft.data import preprocess
from mtft.data.config import DataConfig, TaskSpec
from mtft.data.tasks import load_tasks
from mtft.models import build_byte_tokenizer


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTFT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "preprocessed"


def _write(path, n: int, offset: int = 0):
    chats = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(offset, offset + n)
    ]
    path.write_text("".join(json.dumps(c) + "\n" for c in chats))
    return str(path)


def _load(path, tokenizer, **data):
    (task,) = load_tasks(DataConfig(tasks=[TaskSpec(name="t", path=path)], **data), tokenizer, seed=0)
    return task


def _forbid_tokenizing(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("tokenized again despite a cache entry")

    monkeypatch.setattr(preprocess, "tokenize_example", boom)


def test_second_load_comes_from_the_cache(tmp_path, cache, monkeypatch):
    tokenizer = build_byte_tokenizer()
    path = _write(tmp_path / "t.jsonl", 20)
    first = _load(path, tokenizer)
    assert len(list(cache.iterdir())) == 1
    _forbid_tokenizing(monkeypatch)
    second = _load(path, tokenizer)
    assert [s.input_ids for s in second.train] == [s.input_ids for s in first.train]
    assert second.report == first.report
    # Length policies apply after the cache: a new max_seq_len re-tokenizes nothing.
    shortest = min(len(s.input_ids) for s in first.train + first.val)
    shorter = _load(path, tokenizer, max_seq_len=shortest)
    assert shorter.report["dropped"] == {"too_long": 10}  # "q10".."q19" samples are two tokens longer


def test_changed_data_or_tokenizer_misses_the_cache(tmp_path, cache):
    tokenizer = build_byte_tokenizer()
    path = _write(tmp_path / "t.jsonl", 20)
    _load(path, tokenizer)
    _write(tmp_path / "t.jsonl", 20, offset=100)  # same size would not be enough: content and mtime change
    os.utime(path, ns=(1, 1))
    changed = _load(path, tokenizer)
    texts = [tokenizer.decode(s.input_ids) for s in changed.train + changed.val]
    assert any("q100" in t for t in texts) and not any("q5<" in t for t in texts)
    other = build_byte_tokenizer()
    other.chat_template = other.chat_template.replace("<|im_start|>", "<|im_start|> ")
    _load(path, other)
    assert len(list(cache.iterdir())) == 3


def test_parallel_map_gives_the_same_samples(tmp_path, cache, monkeypatch):
    tokenizer = build_byte_tokenizer()
    path = _write(tmp_path / "t.jsonl", 40)
    single = _load(path, tokenizer, num_proc=1)
    monkeypatch.setattr(preprocess, "PARALLEL_FROM", 1)
    monkeypatch.setenv("MTFT_CACHE_DIR", str(tmp_path / "other_cache"))
    parallel = _load(path, tokenizer, num_proc=2)
    assert [s.input_ids for s in parallel.train] == [s.input_ids for s in single.train]
    assert [s.labels for s in parallel.val] == [s.labels for s in single.val]
