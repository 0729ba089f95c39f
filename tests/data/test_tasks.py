"""mtft.data.tasks: task files to tokenized train/validation samples, with an exact per-task account.

Token counts by hand (byte tokenizer): a {user Q, assistant A} sample is len(Q) + len(A) + 21 tokens
(user turn len(Q) + 8, generation prompt 11, answer len(A) + 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtft.data.config import DataConfig, TaskSpec
from mtft.data.tasks import Sample, TaskData, load_tasks
from mtft.data.tokenize import IGNORE, tokenize_messages
from mtft.errors import DataError
from mtft.models import build_byte_tokenizer

END = "<|im_end|>\n"


@pytest.fixture(scope="module")
def tok():
    return build_byte_tokenizer()


def record(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def write(path: Path, items: list) -> str:
    """Write records (dicts) and raw lines (str) to a JSONL file; returns the path as a string."""
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in items), encoding="utf-8")
    return str(path)


def uniform_records(n: int) -> list[dict]:
    """n distinct samples of exactly 3 + 3 + 21 = 27 tokens each."""
    return [record(f"q{i:02d}", f"a{i:02d}") for i in range(n)]


def load(paths: list[str], tok, seed: int = 0, **kwargs) -> list[TaskData]:
    specs = kwargs.pop("specs", None) or [TaskSpec(name=f"t{i}", path=p) for i, p in enumerate(paths)]
    return load_tasks(DataConfig(tasks=specs, **kwargs), tok, seed)


def key(sample: Sample) -> tuple[int, ...]:
    return tuple(sample.input_ids)


def answer_of(tok, sample: Sample) -> str:
    return tok.decode([t for t, lab in zip(sample.input_ids, sample.labels, strict=True) if lab != IGNORE])


def check_accounting(report: dict) -> None:
    assert report["samples"] + sum(report["dropped"].values()) == report["lines_read"]
    assert report["train_samples"] + report["val_samples"] == report["samples"]


# ---- the report ---------------------------------------------------------------------------------------------------


def test_report_of_a_clean_file(tmp_path, tok):
    path = write(tmp_path / "clean.jsonl", uniform_records(50))
    (task,) = load([path], tok)
    assert task.name == "t0"
    assert task.report == {
        "path": path,
        "format": "messages",
        "lines_read": 50,
        "samples": 50,
        "train_samples": 45,
        "val_samples": 5,
        "train_tokens": 45 * 27,
        "mean_length": 27.0,
        "max_length": 27,
        "dropped": {},
        "truncated": 0,
    }
    assert len(task.train) == 45 and len(task.val) == 5
    assert all(len(s.input_ids) == len(s.labels) == 27 for s in task.train + task.val)


def test_blank_lines_are_not_counted_as_lines_read(tmp_path, tok):
    recs = uniform_records(6)
    path = write(tmp_path / "b.jsonl", ["", recs[0], recs[1], "  ", recs[2], recs[3], "", recs[4], recs[5], ""])
    (task,) = load([path], tok)
    assert task.report["lines_read"] == 6
    assert task.report["samples"] == 6
    check_accounting(task.report)


def test_mean_and_max_length(tmp_path, tok):
    recs = [record("q", "a"), record("qq", "a"), record("qqq", "aaaa"), record("q" * 10, "a" * 5)]
    (task,) = load([write(tmp_path / "m.jsonl", recs)], tok)
    lengths = [23, 24, 28, 36]
    assert task.report["max_length"] == 36
    assert task.report["mean_length"] == round(sum(lengths) / 4, 1) == 27.8
    assert task.report["train_tokens"] == sum(len(s.input_ids) for s in task.train)
    assert sorted(len(s.input_ids) for s in task.train + task.val) == lengths


# ---- overlong policies --------------------------------------------------------------------------------------------


def overlong_file(tmp_path: Path) -> tuple[str, list[dict]]:
    """20 samples of 27 tokens and 3 with a 40-character answer: 3 + 40 + 21 = 64 tokens; blank lines between."""
    short = uniform_records(20)
    long = [record(f"L{i:02d}", chr(ord("A") + i) * 40) for i in range(3)]
    items = short[:5] + [long[0], ""] + short[5:12] + [long[1]] + short[12:] + ["", long[2]]
    return write(tmp_path / "over.jsonl", items), long


def test_overlong_drop_counts_too_long(tmp_path, tok):
    path, long = overlong_file(tmp_path)
    (task,) = load([path], tok, max_seq_len=48, overlong="drop")
    report = task.report
    assert report["lines_read"] == 23
    assert report["samples"] == 20
    assert report["dropped"] == {"too_long": 3}
    assert report["truncated"] == 0
    assert report["max_length"] == 27
    check_accounting(report)
    answers = {answer_of(tok, s) for s in task.train + task.val}
    assert answers == {f"a{i:02d}" + END for i in range(20)}


def test_overlong_truncate_cuts_to_max_seq_len(tmp_path, tok):
    path, long = overlong_file(tmp_path)
    (task,) = load([path], tok, max_seq_len=48, overlong="truncate")
    report = task.report
    assert report["lines_read"] == 23
    assert report["samples"] == 23
    assert report["truncated"] == 3
    assert report["dropped"] == {}
    assert report["max_length"] == 48
    check_accounting(report)
    samples = task.train + task.val
    assert sorted(len(s.input_ids) for s in samples) == [27] * 20 + [48] * 3
    expected = {}
    for rec in long:
        ids, labels = tokenize_messages(tok, rec["messages"])
        assert len(ids) == 64
        expected[tuple(ids[:48])] = labels[:48]
    cut = {key(s): s.labels for s in samples if len(s.input_ids) == 48}
    assert cut == expected
    # the labels were cut along with the ids: 48 - 22 prompt tokens = 26 answer tokens remain
    assert all(sum(lab != IGNORE for lab in labels) == 26 for labels in cut.values())


def test_truncation_that_removes_the_whole_answer_drops_the_sample(tmp_path, tok):
    # a 40-character question: the prompt alone is 40 + 8 + 11 = 59 tokens > 48
    recs = uniform_records(4) + [record("Q" * 40, "a")]
    (task,) = load([write(tmp_path / "p.jsonl", recs)], tok, max_seq_len=48, overlong="truncate")
    assert task.report["dropped"] == {"no_trainable_tokens": 1}
    assert task.report["truncated"] == 0  # counted among kept samples only
    assert task.report["samples"] == 4
    check_accounting(task.report)
    assert all(len(s.input_ids) == 27 for s in task.train + task.val)


def test_overlong_error_names_file_and_line(tmp_path, tok):
    path, _ = overlong_file(tmp_path)
    with pytest.raises(DataError) as info:
        load([path], tok, max_seq_len=48, overlong="error")
    message = str(info.value)
    assert message.startswith(f"{path}:6:")  # the first long sample is on physical line 6
    assert "64 tokens" in message
    assert "max_seq_len=48" in message


def test_a_sample_of_exactly_max_seq_len_is_kept(tmp_path, tok):
    recs = uniform_records(5) + [record("q99", "a999")]  # 27 tokens x5 and one of 28
    (task,) = load([write(tmp_path / "edge.jsonl", recs)], tok, max_seq_len=27)
    assert task.report["samples"] == 5
    assert task.report["dropped"] == {"too_long": 1}
    assert task.report["max_length"] == 27


# ---- train / validation split ------------------------------------------------------------------------------------


def test_split_is_disjoint_and_complete(tmp_path, tok):
    recs = uniform_records(50)
    (task,) = load([write(tmp_path / "s.jsonl", recs)], tok, val_fraction=0.2)
    train, val = {key(s) for s in task.train}, {key(s) for s in task.val}
    assert len(train) == 40 and len(val) == 10
    assert not train & val
    assert train | val == {tuple(tokenize_messages(tok, r["messages"])[0]) for r in recs}


def test_split_is_deterministic_for_a_seed(tmp_path, tok):
    path = write(tmp_path / "s.jsonl", uniform_records(50))
    (a,) = load([path], tok, seed=7)
    (b,) = load([path], tok, seed=7)
    (c,) = load([path], tok, seed=8)
    assert [key(s) for s in a.train] == [key(s) for s in b.train]
    assert [key(s) for s in a.val] == [key(s) for s in b.val]
    assert {key(s) for s in a.val} != {key(s) for s in c.val}


def test_split_is_shuffled_not_the_file_tail_or_head(tmp_path, tok):
    recs = uniform_records(50)
    (task,) = load([write(tmp_path / "s.jsonl", recs)], tok, val_fraction=0.2)
    in_order = [tuple(tokenize_messages(tok, r["messages"])[0]) for r in recs]
    val = {key(s) for s in task.val}
    assert val != set(in_order[:10]) and val != set(in_order[-10:])


@pytest.mark.parametrize(
    ("n", "val_fraction", "task_fraction", "max_val", "expected_val"),
    [
        (50, 0.1, None, 128, 5),
        (50, 0.1, 0.3, 128, 15),  # the task's own val_fraction wins
        (30, 0.5, None, 128, 15),
        (50, 0.5, None, 3, 3),  # capped by max_val_samples
        (4, 0.1, None, 128, 1),  # round(0.4) = 0, but at least one
        (2, 0.9, None, 128, 1),  # at most n - 1: train is never empty
    ],
)
def test_validation_size(tmp_path, tok, n, val_fraction, task_fraction, max_val, expected_val):
    path = write(tmp_path / "v.jsonl", uniform_records(n))
    spec = TaskSpec(name="v", path=path, val_fraction=task_fraction)
    (task,) = load([], tok, specs=[spec], val_fraction=val_fraction, max_val_samples=max_val)
    assert len(task.val) == task.report["val_samples"] == expected_val
    assert len(task.train) == task.report["train_samples"] == n - expected_val


# ---- several tasks ------------------------------------------------------------------------------------------------


def test_several_tasks_carry_their_task_id(tmp_path, tok):
    paths = [
        write(tmp_path / "a.jsonl", uniform_records(10)),
        write(tmp_path / "b.jsonl", [record(f"b{i}", "x") for i in range(7)]),
        write(tmp_path / "c.jsonl", uniform_records(3)),
    ]
    tasks = load(paths, tok)
    assert [t.name for t in tasks] == ["t0", "t1", "t2"]
    assert [t.report["samples"] for t in tasks] == [10, 7, 3]
    assert [t.report["path"] for t in tasks] == paths
    for task_id, task in enumerate(tasks):
        assert {s.task_id for s in task.train + task.val} == {task_id}
        check_accounting(task.report)


def test_same_seed_splits_tasks_differently(tmp_path, tok):
    path = write(tmp_path / "s.jsonl", uniform_records(50))
    specs = [TaskSpec(name="one", path=path), TaskSpec(name="two", path=path)]
    one, two = load([], tok, specs=specs, val_fraction=0.2)
    assert {key(s) for s in one.val} != {key(s) for s in two.val}


def test_train_on_prompt_labels_everything(tmp_path, tok):
    (task,) = load([write(tmp_path / "p.jsonl", uniform_records(5))], tok, train_on_prompt=True)
    assert all(s.labels == s.input_ids for s in task.train + task.val)


def test_labels_cover_the_answers(tmp_path, tok):
    (task,) = load([write(tmp_path / "p.jsonl", uniform_records(8))], tok)
    assert sorted(answer_of(tok, s) for s in task.train + task.val) == [f"a{i:02d}" + END for i in range(8)]


# ---- errors -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "records",
    [
        [record("q", "a")],  # one sample
        [record("q", "a"), record("Q" * 40, "x"), record("R" * 40, "y")],  # two of three dropped as too long
    ],
)
def test_fewer_than_two_usable_samples_is_an_error(tmp_path, tok, records):
    path = write(tmp_path / "few.jsonl", records)
    with pytest.raises(DataError) as info:
        load([path], tok, max_seq_len=48)
    message = str(info.value)
    assert message.startswith(f"{path}:")
    assert "task 't0' has 1 usable samples" in message and message.endswith("it needs >= 2")
    if len(records) == 3:  # the message says where the rest went
        assert "(of 3 lines, dropped: {'too_long': 2})" in message


def test_bad_record_names_file_line_and_field(tmp_path, tok):
    good = write(tmp_path / "good.jsonl", uniform_records(5))
    bad_record = {"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}
    bad = write(tmp_path / "bad.jsonl", [*uniform_records(2), "", bad_record])
    with pytest.raises(DataError) as info:
        load([good, bad], tok)
    message = str(info.value)
    assert message.startswith(f"{bad}:4: field 'messages[1].role'")
    assert "unknown role 'bot'" in message


def test_undetectable_format_under_auto(tmp_path, tok):
    path = write(tmp_path / "f.jsonl", [*uniform_records(2), {"question": "p", "answer": "c"}])
    with pytest.raises(DataError) as info:
        load([path], tok)
    assert str(info.value).startswith(f"{path}:3:")
    assert "cannot detect the format" in str(info.value)


def test_explicit_messages_format_skips_detection(tmp_path, tok):
    path = write(tmp_path / "f.jsonl", [*uniform_records(2), {"prompt": "p", "completion": "c"}])
    spec = TaskSpec(name="x", path=path, format="messages")
    with pytest.raises(DataError) as info:
        load([], tok, specs=[spec])
    message = str(info.value)
    assert message.startswith(f"{path}:3: field 'messages'")
    assert "cannot detect" not in message


def test_missing_task_file(tmp_path, tok):
    path = str(tmp_path / "absent.jsonl")
    with pytest.raises(DataError, match="no such file") as info:
        load([path], tok)
    assert str(info.value).startswith(path)


def test_template_error_becomes_a_data_error_with_location(tmp_path):
    tok = build_byte_tokenizer()
    tok.chat_template = (
        "{% for message in messages | reverse %}{{ message['role'] + ': ' + message['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    path = write(tmp_path / "t.jsonl", ["", *uniform_records(3)])
    with pytest.raises(DataError) as info:
        load([path], tok)
    message = str(info.value)
    assert message.startswith(f"{path}:2: field 'messages'")
    assert "prefix-stable" in message
