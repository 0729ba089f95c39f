"""mtft.data.synthetic: the bundled demo suite is deterministic, matches the shipped files and is correct."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mtft.data import synthetic
from mtft.data.config import DataConfig, TaskSpec
from mtft.data.formats import detect_format, to_example
from mtft.data.sources import read_records
from mtft.data.synthetic import CONFLICT_DIR, CONFLICT_TASKS, NEGATIVE, NOUNS, POSITIVE, generate, write_suite
from mtft.data.tasks import load_tasks
from mtft.models import build_byte_tokenizer

DEMO = Path(synthetic.__file__).parent / "demo"
COUNTS = {"add": 2400, "reverse": 1600, "sort": 1200, "sentiment": 400}  # as documented in mtft/data/synthetic.py


@pytest.fixture(scope="module")
def suite() -> dict[str, list[dict]]:
    return {name: generate(name) for name in COUNTS}


def pairs(records: list[dict]) -> list[tuple[str, str]]:
    return [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in records]


def test_the_suite_has_the_four_documented_tasks(suite):
    assert list(synthetic.TASKS) == ["add", "reverse", "sort", "sentiment"]
    assert {name: len(records) for name, records in suite.items()} == COUNTS


def test_generate_is_deterministic(suite):
    for name, records in suite.items():
        again = generate(name)
        assert again == records
        assert again is not records


def test_tasks_use_different_seeds(suite):
    assert len({synthetic.TASKS[name][2] for name in COUNTS}) == 4


def test_write_suite_reproduces_the_shipped_files(tmp_path):
    paths = write_suite(tmp_path / "out")
    assert [p.name for p in paths] == ["add.jsonl", "reverse.jsonl", "sort.jsonl", "sentiment.jsonl"]
    assert sorted(p.name for p in DEMO.glob("*.jsonl")) == sorted(p.name for p in paths)
    for path in paths:
        assert path.parent == tmp_path / "out"
        assert path.read_bytes() == (DEMO / path.name).read_bytes(), path.name


def test_module_entry_point_writes_the_suite(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mtft.data.synthetic", str(tmp_path)], capture_output=True, text=True, check=True
    )
    conflict = [str(tmp_path / "conflict" / f"{name}.jsonl") for name in CONFLICT_TASKS]
    assert result.stdout.split() == [str(tmp_path / f"{name}.jsonl") for name in COUNTS] + conflict
    assert (tmp_path / "sort.jsonl").read_bytes() == (DEMO / "sort.jsonl").read_bytes()
    for name in CONFLICT_TASKS:
        assert (tmp_path / "conflict" / f"{name}.jsonl").read_bytes() == (CONFLICT_DIR / f"{name}.jsonl").read_bytes()


def test_conflicting_tasks_share_their_inputs_and_differ_in_their_answers():
    suites = {name: pairs(generate(name)) for name in CONFLICT_TASKS}
    inputs = {name: [prompt.split(": ", 1)[1] for prompt, _ in records] for name, records in suites.items()}
    assert inputs["ascending"] == inputs["descending"] == inputs["backwards"]
    assert all(len(records) == 1000 for records in suites.values())
    differ = 0
    for (up, a), (down, d), (back, b) in zip(*suites.values(), strict=True):
        digits = [int(x) for x in up.split(": ", 1)[1].split()]
        assert 4 <= len(digits) <= 7
        assert up.startswith("Sort ascending: ") and a == " ".join(map(str, sorted(digits)))
        assert down.startswith("Sort descending: ") and d == " ".join(map(str, sorted(digits, reverse=True)))
        assert back.startswith("Write backwards: ") and b == " ".join(map(str, digits[::-1]))
        differ += len({a, d, b}) == 3
    assert differ > 0.9 * 1000  # the instruction, not the input, decides the answer


@pytest.mark.parametrize("name", list(COUNTS))
def test_shipped_records_are_valid_messages(name):
    path = str(DEMO / f"{name}.jsonl")
    records = list(read_records(path))
    assert [where.line for where, _ in records] == list(range(1, COUNTS[name] + 1))
    for where, record in records:
        assert set(record) == {"messages"}
        assert detect_format(record, where) == "messages"
        messages = to_example(record, "messages", where).messages
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages == record["messages"]
        assert all(m["content"] for m in messages)


def test_addition_answers_are_correct(suite):
    carries = 0
    for prompt, answer in pairs(suite["add"]):
        match = re.fullmatch(r"What is (\d+) \+ (\d+)\?", prompt)
        assert match, prompt
        a, b = int(match.group(1)), int(match.group(2))
        assert 10 <= a <= 9999 and 10 <= b <= 9999
        assert answer == str(a + b)
        carries += (a % 10 + b % 10) >= 10
    assert carries > 0.3 * COUNTS["add"]  # the task is meant to need carries
    lengths = {len(m) for p, _ in pairs(suite["add"]) for m in re.findall(r"\d+", p)}
    assert lengths == {2, 3, 4}


def test_reversal_answers_are_correct(suite):
    lengths = set()
    for prompt, answer in pairs(suite["reverse"]):
        match = re.fullmatch(r"Reverse: ([a-z]+)", prompt)
        assert match, prompt
        word = match.group(1)
        lengths.add(len(word))
        assert answer == word[::-1]
    assert lengths == set(range(3, 9))


def test_sorting_answers_are_correct(suite):
    lengths = set()
    for prompt, answer in pairs(suite["sort"]):
        match = re.fullmatch(r"Sort: (\d( \d)*)", prompt)
        assert match, prompt
        digits = [int(d) for d in match.group(1).split()]
        lengths.add(len(digits))
        assert answer == " ".join(str(d) for d in sorted(digits))
    assert lengths == set(range(4, 8))


def test_sentiment_answers_are_correct(suite):
    labels = []
    for prompt, answer in pairs(suite["sentiment"]):
        match = re.fullmatch(r"Review: the (\w+) was (\w+)\. Sentiment\?", prompt)
        assert match, prompt
        noun, adjective = match.groups()
        assert noun in NOUNS
        assert answer == ("positive" if adjective in POSITIVE else "negative")
        assert adjective in POSITIVE + NEGATIVE
        labels.append(answer)
    assert not set(POSITIVE) & set(NEGATIVE)
    # both classes are well represented
    assert 0.35 < labels.count("positive") / len(labels) < 0.65


def test_tasks_are_mostly_distinct(suite):
    for name in ("add", "reverse"):
        prompts = [p for p, _ in pairs(suite[name])]
        assert len(set(prompts)) > 0.9 * len(prompts), name


def test_shipped_suite_fits_the_demo_max_seq_len():
    # mtft/configs/data/demo.yaml uses max_seq_len 128: nothing should be dropped or truncated
    specs = [TaskSpec(name=name, path=str(DEMO / f"{name}.jsonl")) for name in COUNTS]
    tasks = load_tasks(DataConfig(tasks=specs, max_seq_len=128), build_byte_tokenizer(), seed=0)
    for task in tasks:
        report = task.report
        assert report["samples"] == report["lines_read"] == COUNTS[task.name]
        assert report["dropped"] == {} and report["truncated"] == 0
        assert report["max_length"] <= 128
    assert json.dumps([t.report for t in tasks])  # the report is JSON-serialisable
