"""mtft.data.formats: every user format to the internal Example, format detection, field renaming, and errors that
name the location, the field and a reason slug; then the same through mtft.data.tasks.load_tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtft.data.config import DataConfig, TaskSpec
from mtft.data.formats import FORMATS, Example, detect_format, rename_fields, to_example
from mtft.data.sources import Location
from mtft.data.tasks import load_tasks
from mtft.data.tokenize import IGNORE
from mtft.errors import DataError
from mtft.models import build_byte_tokenizer

WHERE = Location("f.jsonl", 3)


def sys_(content: str) -> dict:
    return {"role": "system", "content": content}


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def bot(content: str) -> dict:
    return {"role": "assistant", "content": content}


def convert(record: dict, fmt: str) -> Example:
    return to_example(record, fmt, WHERE)


def error(record: dict, fmt: str) -> DataError:
    with pytest.raises(DataError) as info:
        to_example(record, fmt, WHERE)
    return info.value


# ---- conversions ----------------------------------------------------------------------------------------------------


def test_messages_keeps_role_and_content_only():
    record = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "q", "name": "bob"},
            {"role": "assistant", "content": "a", "weight": 1},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2"},
        ],
        "id": 7,
    }
    example = convert(record, "messages")
    assert example == Example([sys_("be brief"), user("q"), bot("a"), user("q2"), bot("a2")])
    assert example.text is None


def test_messages_with_a_top_level_system_field():
    record = {"system": "S", "messages": [user("q"), bot("a")]}
    assert convert(record, "messages").messages == [sys_("S"), user("q"), bot("a")]


def test_sharegpt_roles():
    record = {
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "q1"},
            {"from": "gpt", "value": "a1"},
            {"from": "user", "value": "q2"},
            {"from": "assistant", "value": "a2"},
        ]
    }
    assert convert(record, "sharegpt") == Example([sys_("S"), user("q1"), bot("a1"), user("q2"), bot("a2")])


def test_sharegpt_top_level_system_field_comes_first():
    record = {"system": "S", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    assert convert(record, "sharegpt").messages == [sys_("S"), user("q"), bot("a")]


def test_empty_top_level_system_field_adds_nothing():
    record = {"system": "", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    assert convert(record, "sharegpt").messages == [user("q"), bot("a")]


def test_chat_rounds_roles():
    record = {
        "chat_rounds": [
            {"role": "system", "content": "S"},
            {"role": "human", "content": "q1"},
            {"role": "bot", "content": "a1"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2"},
        ]
    }
    assert convert(record, "chat_rounds") == Example([sys_("S"), user("q1"), bot("a1"), user("q2"), bot("a2")])


def test_sharegpt_does_not_accept_chat_rounds_bot_role():
    record = {"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]}
    err = error(record, "sharegpt")
    assert err.reason == "unknown_role"
    assert str(err).startswith("f.jsonl:3: field 'conversations[1].from' unknown role 'bot'")


def test_alpaca_joins_instruction_and_input_with_a_blank_line():
    record = {"instruction": "Translate.", "input": "Hallo", "output": "Hello"}
    assert convert(record, "alpaca") == Example([user("Translate.\n\nHallo"), bot("Hello")])


@pytest.mark.parametrize("extra", [{}, {"input": ""}, {"input": None}])
def test_alpaca_without_input(extra):
    record = {"instruction": "Say hi.", "output": "hi", **extra}
    assert convert(record, "alpaca").messages == [user("Say hi."), bot("hi")]


def test_alpaca_with_system():
    record = {"instruction": "i", "input": "x", "output": "o", "system": "S"}
    assert convert(record, "alpaca").messages == [sys_("S"), user("i\n\nx"), bot("o")]


@pytest.mark.parametrize("answer_key", ["response", "completion"])
def test_prompt_response_and_completion(answer_key):
    assert convert({"prompt": "p", answer_key: "r"}, "prompt_response") == Example([user("p"), bot("r")])


def test_prompt_response_with_system_prefers_response():
    record = {"prompt": "p", "response": "r", "completion": "c", "system": "S"}
    assert convert(record, "prompt_response").messages == [sys_("S"), user("p"), bot("r")]


def test_text_sets_text_and_no_messages():
    example = convert({"text": "once upon a time", "system": "ignored"}, "text")
    assert example.text == "once upon a time"
    assert example.messages == []


def test_formats_table_lists_the_six_formats_in_detection_order():
    assert list(FORMATS) == ["messages", "sharegpt", "chat_rounds", "alpaca", "prompt_response", "text"]


# ---- detect_format --------------------------------------------------------------------------------------------------

MESSAGES = {"messages": [user("q"), bot("a")]}
SHAREGPT = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
CHAT_ROUNDS = {"chat_rounds": [{"role": "human", "content": "q"}, {"role": "bot", "content": "a"}]}
ALPACA = {"instruction": "i", "input": "x", "output": "o"}
PROMPT_RESPONSE = {"prompt": "p", "response": "r"}
TEXT = {"text": "t"}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (MESSAGES, "messages"),
        (SHAREGPT, "sharegpt"),
        (CHAT_ROUNDS, "chat_rounds"),
        (ALPACA, "alpaca"),
        ({"instruction": "i", "output": "o"}, "alpaca"),
        (PROMPT_RESPONSE, "prompt_response"),
        ({"prompt": "p", "completion": "c"}, "prompt_response"),
        (TEXT, "text"),
    ],
)
def test_detect_format_from_fields(record, expected):
    assert detect_format(record, WHERE) == expected


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({**MESSAGES, **SHAREGPT, **CHAT_ROUNDS, **ALPACA, **PROMPT_RESPONSE, **TEXT}, "messages"),
        ({**SHAREGPT, **CHAT_ROUNDS, **ALPACA, **PROMPT_RESPONSE, **TEXT}, "sharegpt"),
        ({**CHAT_ROUNDS, **ALPACA, **PROMPT_RESPONSE, **TEXT}, "chat_rounds"),
        ({**ALPACA, **PROMPT_RESPONSE, **TEXT}, "alpaca"),
        ({**PROMPT_RESPONSE, **TEXT}, "prompt_response"),
        ({"instruction": "i", **TEXT}, "text"),  # alpaca needs both instruction and output
    ],
)
def test_detect_format_follows_the_documented_order(record, expected):
    assert detect_format(record, WHERE) == expected


def test_unknown_fields_raise_unknown_format_listing_the_known_formats():
    with pytest.raises(DataError) as info:
        detect_format({"question": "q", "answer": "a"}, WHERE)
    err = info.value
    assert err.reason == "unknown_format"
    message = str(err)
    assert message.startswith("f.jsonl:3: cannot detect the format from fields ['answer', 'question']")
    for name, (keys, _) in FORMATS.items():
        assert f"{name}: {', '.join(keys)}" in message
    assert "alpaca: instruction, output" in message


def test_instruction_without_output_is_not_alpaca():
    with pytest.raises(DataError) as info:
        detect_format({"instruction": "i"}, WHERE)
    assert info.value.reason == "unknown_format"


# ---- errors ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "fmt", "field", "reason", "problem"),
    [
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]},
            "sharegpt",
            "conversations[1].from",
            "unknown_role",
            "unknown role 'robot'; expected one of system, human, user, gpt, assistant",
        ),
        (
            {"messages": [user("q"), {"role": "bot", "content": "a"}]},
            "messages",
            "messages[1].role",
            "unknown_role",
            "unknown role 'bot'; expected one of system, user, assistant",
        ),
        (
            {"chat_rounds": [{"role": "human", "content": "q"}, {"role": "gpt", "content": "a"}]},
            "chat_rounds",
            "chat_rounds[1].role",
            "unknown_role",
            "unknown role 'gpt'; expected one of system, human, user, bot, assistant",
        ),
        (
            {"messages": [user(5), bot("a")]},
            "messages",
            "messages[0].content",
            "bad_type",
            "must be a string, got int",
        ),
        (
            {"messages": [user("q"), {"role": "assistant", "content": ["a"]}]},
            "messages",
            "messages[1].content",
            "bad_type",
            "must be a string, got list",
        ),
        (
            {"messages": [user("q"), {"role": "assistant"}]},
            "messages",
            "messages[1].content",
            "missing_field",
            "is missing",
        ),
        ({"messages": [user("q"), "assistant: a"]}, "messages", "messages[1]", "bad_type", "must be an object"),
        ({"messages": []}, "messages", "messages", "missing_field", "must be a non-empty list"),
        ({"messages": "q"}, "messages", "messages", "missing_field", "must be a non-empty list"),
        ({"text": "t"}, "sharegpt", "conversations", "missing_field", "must be a non-empty list of {from, value}"),
        ({"instruction": "i"}, "alpaca", "output", "missing_field", "is missing"),
        ({"output": "o"}, "alpaca", "instruction", "missing_field", "is missing"),
        ({"instruction": "i", "output": 3}, "alpaca", "output", "bad_type", "must be a string, got int"),
        ({"instruction": "i", "input": 3, "output": "o"}, "alpaca", "input", "bad_type", "must be a string, got int"),
        ({"prompt": "p"}, "prompt_response", "completion", "missing_field", "is missing"),
        ({"response": "r"}, "prompt_response", "prompt", "missing_field", "is missing"),
        ({"system": 1, **MESSAGES}, "messages", "system", "bad_type", "must be a string, got int"),
        ({"text": 12}, "text", "text", "bad_type", "must be a string, got int"),
        ({"text": ""}, "text", "text", "empty_text", "is empty"),
        ({"title": "t"}, "text", "text", "missing_field", "is missing"),
    ],
)
def test_errors_name_location_field_and_reason(record, fmt, field, reason, problem):
    err = error(record, fmt)
    assert err.reason == reason
    assert str(err).startswith(f"f.jsonl:3: field '{field}' {problem}")


def test_errors_in_columnar_sources_name_the_row():
    with pytest.raises(DataError) as info:
        to_example({"text": ""}, "text", Location("d.parquet", 9, "row"))
    assert str(info.value) == "d.parquet row 9: field 'text' is empty"


def test_first_problem_in_order_is_reported():
    err = error({"messages": [user(1), {"role": "robot", "content": "a"}]}, "messages")
    assert "messages[0].content" in str(err)


@pytest.mark.parametrize(
    ("record", "fmt", "field"),
    [
        ({"messages": [user("q"), user("q2"), bot("a")]}, "messages", "messages[1]"),
        ({"messages": [bot("a"), user("q")]}, "messages", "messages[0]"),
        ({"messages": [sys_("S"), user("q"), bot("a"), bot("b")]}, "messages", "messages[3]"),
        ({"messages": [sys_("S"), bot("a")]}, "messages", "messages[1]"),
        # a system message anywhere but first
        ({"messages": [user("q"), sys_("S"), bot("a")]}, "messages", "messages[1]"),
        ({"messages": [sys_("S"), sys_("T"), user("q"), bot("a")]}, "messages", "messages[1]"),
        # with a top-level system field the index still counts positions in the record's own list
        ({"system": "S", "messages": [user("q"), user("q2"), bot("a")]}, "messages", "messages[1]"),
        ({"system": "S", "messages": [sys_("T"), user("q"), bot("a")]}, "messages", "messages[0]"),
        (
            {"system": "S", "conversations": [{"from": "human", "value": "q"}, {"from": "user", "value": "q2"}]},
            "sharegpt",
            "conversations[1]",
        ),
        (
            {
                "system": "S",
                "conversations": [
                    {"from": "human", "value": "q"},
                    {"from": "gpt", "value": "a"},
                    {"from": "gpt", "value": "b"},
                ],
            },
            "sharegpt",
            "conversations[2]",
        ),
        (
            {"chat_rounds": [{"role": "human", "content": "q"}, {"role": "user", "content": "q2"}]},
            "chat_rounds",
            "chat_rounds[1]",
        ),
    ],
)
def test_roles_not_alternating(record, fmt, field):
    err = error(record, fmt)
    assert err.reason == "roles_not_alternating"
    assert str(err).startswith(f"f.jsonl:3: field '{field}' roles must alternate user/assistant")


def test_roles_not_alternating_says_what_was_found_and_expected():
    err = error({"messages": [user("q"), user("q2")]}, "messages")
    assert "found 'user' where 'assistant' belongs" in str(err)


@pytest.mark.parametrize(
    ("record", "fmt", "field"),
    [
        ({"messages": [user("q")]}, "messages", "messages"),
        ({"messages": [sys_("S")]}, "messages", "messages"),
        ({"system": "S", "messages": [user("q")]}, "messages", "messages"),
        ({"conversations": [{"from": "human", "value": "q"}]}, "sharegpt", "conversations"),
        ({"chat_rounds": [{"role": "system", "content": "S"}]}, "chat_rounds", "chat_rounds"),
    ],
)
def test_no_assistant_turn(record, fmt, field):
    err = error(record, fmt)
    assert err.reason == "no_assistant_turn"
    assert str(err).startswith(f"f.jsonl:3: field '{field}' has no assistant turn")


# ---- rename_fields --------------------------------------------------------------------------------------------------


def test_rename_fields_maps_ours_to_theirs_and_drops_their_names():
    record = {"question": "q", "answer": "a", "id": 1}
    renamed = rename_fields(record, {"instruction": "question", "output": "answer"})
    assert renamed == {"instruction": "q", "output": "a", "id": 1}
    assert record == {"question": "q", "answer": "a", "id": 1}  # the input is not modified


def test_rename_fields_overrides_an_existing_column_of_our_name():
    renamed = rename_fields({"text": "old", "body": "new"}, {"text": "body"})
    assert renamed == {"text": "new"}


def test_rename_fields_leaves_records_without_their_column_alone():
    assert rename_fields({"text": "t"}, {"text": "body"}) == {"text": "t"}


@pytest.mark.parametrize("fields", [{}, None])
def test_rename_fields_without_a_mapping_returns_the_record(fields):
    record = {"a": 1}
    assert rename_fields(record, fields) is record


# ---- through load_tasks ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok():
    return build_byte_tokenizer()


def write(path: Path, items: list) -> str:
    """Records (dicts) and raw lines (str, or bytes verbatim) to a JSONL file; returns the path."""
    chunks = []
    for item in items:
        raw = item if isinstance(item, bytes) else (json.dumps(item) if isinstance(item, dict) else item).encode()
        chunks.append(raw + b"\n")
    path.write_bytes(b"".join(chunks))
    return str(path)


def load_one(tok, spec: TaskSpec, **kwargs):
    (task,) = load_tasks(DataConfig(tasks=[spec], **kwargs), tok, 0)
    return task


def decoded(tok, samples) -> list[str]:
    return [tok.decode(s.input_ids) for s in samples]


def answers(tok, samples) -> list[str]:
    return [tok.decode([t for t, lab in zip(s.input_ids, s.labels, strict=True) if lab != IGNORE]) for s in samples]


def qa(i: int) -> dict:
    return {"messages": [user(f"q{i}"), bot(f"a{i}")]}


def test_auto_format_on_a_mixed_file_reports_every_format(tmp_path, tok):
    path = write(tmp_path / "mixed.jsonl", [MESSAGES, SHAREGPT, CHAT_ROUNDS, ALPACA, PROMPT_RESPONSE, TEXT, ALPACA])
    task = load_one(tok, TaskSpec(name="mixed", path=path))
    assert task.report["format"] == "alpaca,chat_rounds,messages,prompt_response,sharegpt,text"
    assert task.report["samples"] == task.report["lines_read"] == 7
    assert task.report["dropped"] == {}
    texts = decoded(tok, task.train + task.val)
    assert sum("i\n\nx" in t for t in texts) == 2  # alpaca's joined prompt made it through the template
    assert any(t.startswith("t") and "<|im_start|>" not in t for t in texts)  # the text sample is plain


BAD_LINES = [
    ("{not json", "malformed_json"),
    ("[1, 2]", "not_an_object"),
    (b'{"text": "\xff"}', "not_utf8"),
    ({"question": "q"}, "unknown_format"),
    ({"messages": [user("q"), {"role": "robot", "content": "a"}]}, "unknown_role"),
    ({"messages": [user(5), bot("a")]}, "bad_type"),
    ({"instruction": "i", "output": None}, "missing_field"),
    ({"messages": [user("q"), user("q2")]}, "roles_not_alternating"),
    ({"messages": [user("q")]}, "no_assistant_turn"),
    ({"text": ""}, "empty_text"),
    ({"prompt": "p" * 300, "response": "r"}, "too_long"),
]


def mixed_good_and_bad() -> list:
    """Good records at lines 1, 2 and every other line after; bad ones in between; blank lines do not count."""
    lines: list = [qa(0), ""]
    for i, (bad, _) in enumerate(BAD_LINES, start=1):
        lines += [bad, qa(i)]
    return lines


def test_drop_counts_each_bad_record_under_its_reason(tmp_path, tok):
    path = write(tmp_path / "bad.jsonl", mixed_good_and_bad())
    task = load_one(tok, TaskSpec(name="t", path=path), bad_records="drop")
    report = task.report
    assert report["dropped"] == {reason: 1 for _, reason in BAD_LINES}
    assert report["samples"] == len(BAD_LINES) + 1
    assert report["lines_read"] == 2 * len(BAD_LINES) + 1
    assert report["samples"] + sum(report["dropped"].values()) == report["lines_read"]
    assert report["train_samples"] + report["val_samples"] == report["samples"]
    expected = sorted(f"a{i}<|im_end|>\n" for i in range(len(BAD_LINES) + 1))
    assert sorted(answers(tok, task.train + task.val)) == expected


def test_error_policy_raises_the_first_bad_record(tmp_path, tok):
    path = write(tmp_path / "bad.jsonl", mixed_good_and_bad())
    with pytest.raises(DataError) as info:
        load_one(tok, TaskSpec(name="t", path=path), bad_records="error")
    assert info.value.reason == "malformed_json"
    assert str(info.value).startswith(f"{path}:3: malformed JSON")


def test_error_policy_raises_field_errors_with_their_location(tmp_path, tok):
    path = write(tmp_path / "bad.jsonl", [qa(0), qa(1), "", BAD_LINES[4][0], BAD_LINES[5][0]])
    with pytest.raises(DataError) as info:
        load_one(tok, TaskSpec(name="t", path=path))
    assert info.value.reason == "unknown_role"
    assert str(info.value).startswith(f"{path}:4: field 'messages[1].role' unknown role 'robot'")


def test_fields_mapping(tmp_path, tok):
    records = [{"question": f"Q{i}?", "answer": f"A{i}.", "id": i} for i in range(4)]
    path = write(tmp_path / "qa.jsonl", records)
    mapping = {"instruction": "question", "output": "answer"}
    task = load_one(tok, TaskSpec(name="qa", path=path, fields=mapping))
    assert task.report["format"] == "alpaca"
    assert task.report["samples"] == 4
    assert sorted(answers(tok, task.train + task.val)) == [f"A{i}.<|im_end|>\n" for i in range(4)]
    assert all(f"Q{i}?" in t for i, t in zip(range(4), sorted(decoded(tok, task.train + task.val)), strict=True))
    with pytest.raises(DataError) as info:  # the same file without the mapping
        load_one(tok, TaskSpec(name="qa", path=path))
    assert info.value.reason == "unknown_format"


def test_fields_mapping_with_an_explicit_format(tmp_path, tok):
    path = write(tmp_path / "c.jsonl", [{"body": f"doc {i}"} for i in range(3)])
    task = load_one(tok, TaskSpec(name="c", path=path, format="text", fields={"text": "body"}))
    assert task.report["format"] == "text"
    assert task.report["samples"] == 3


def test_max_samples_keeps_exactly_n_and_ignores_the_rest(tmp_path, tok):
    (tmp_path / "dir").mkdir()
    write(tmp_path / "dir" / "a.jsonl", [qa(i) for i in range(10)])
    write(tmp_path / "dir" / "b.jsonl", ["{bad"])  # would stop the run (bad_records=error) if it were used
    task = load_one(tok, TaskSpec(name="t", path=str(tmp_path / "dir"), max_samples=4))
    report = task.report
    assert report["samples"] == 4
    assert len(task.train) + len(task.val) == 4
    assert report["lines_read"] == 4
    assert "max 4 samples" in report["stopped_at"] and report["dropped"] == {}
    assert sorted(answers(tok, task.train + task.val)) == [f"a{i}<|im_end|>\n" for i in range(4)]  # the first four


def test_max_samples_counts_usable_samples_not_lines(tmp_path, tok):
    path = write(tmp_path / "many.jsonl", [qa(0), "{bad", {"text": ""}, *[qa(i) for i in range(1, 10)]])
    task = load_one(tok, TaskSpec(name="t", path=path, max_samples=3), bad_records="drop")
    report = task.report
    assert report["samples"] == 3
    assert report["dropped"] == {"malformed_json": 1, "empty_text": 1}
    assert report["lines_read"] == 5
    assert "stopped_at" in report


def test_no_stopped_at_without_reaching_max_samples(tmp_path, tok):
    path = write(tmp_path / "few.jsonl", [qa(i) for i in range(5)])
    task = load_one(tok, TaskSpec(name="t", path=path, max_samples=50))
    assert task.report["samples"] == task.report["lines_read"] == 5
    assert "stopped_at" not in task.report


def test_val_path_gives_validation_from_that_file_only(tmp_path, tok):
    train = write(tmp_path / "train.jsonl", [qa(i) for i in range(5)] + ["{bad"])
    val_records = [{"prompt": f"vq{i}", "response": f"va{i}"} for i in range(3)]
    val = write(tmp_path / "val.jsonl", [*val_records, {"text": ""}, "", {"prompt": "vq3", "response": "va3"}])
    task = load_one(tok, TaskSpec(name="t", path=train, val_path=val), bad_records="drop")
    report = task.report
    assert report["train_samples"] == report["samples"] == 5  # nothing split off the train file
    assert report["val_samples"] == 4
    assert sorted(answers(tok, task.train)) == [f"a{i}<|im_end|>\n" for i in range(5)]
    assert sorted(answers(tok, task.val)) == [f"va{i}<|im_end|>\n" for i in range(4)]
    assert report["dropped"] == {"malformed_json": 1}
    assert report["lines_read"] == 6
    assert report["val"] == {
        "path": val,
        "format": "prompt_response",
        "lines_read": 5,
        "samples": 4,
        "dropped": {"empty_text": 1},
        "truncated": 0,
    }


def test_val_path_allows_a_single_training_sample(tmp_path, tok):
    train = write(tmp_path / "train.jsonl", [qa(0)])
    val = write(tmp_path / "val.jsonl", [qa(1)])
    task = load_one(tok, TaskSpec(name="t", path=train, val_path=val))
    assert (len(task.train), len(task.val)) == (1, 1)


def test_val_path_without_usable_samples_is_an_error(tmp_path, tok):
    train = write(tmp_path / "train.jsonl", [qa(0), qa(1)])
    val = write(tmp_path / "val.jsonl", [{"text": ""}])
    with pytest.raises(DataError) as info:
        load_one(tok, TaskSpec(name="t", path=train, val_path=val), bad_records="drop")
    assert str(info.value) == f"{val}: task 't' has no usable validation samples"


def test_text_format_trains_on_every_token_and_ends_in_eos(tmp_path, tok):
    docs = [f"document number {i}" for i in range(4)]
    path = write(tmp_path / "docs.jsonl", [{"text": d} for d in docs])
    task = load_one(tok, TaskSpec(name="docs", path=path, format="text"))
    assert task.report["format"] == "text"
    samples = task.train + task.val
    assert len(samples) == 4
    for sample in samples:
        assert sample.labels == sample.input_ids
        assert sample.input_ids[-1] == tok.eos_token_id
        assert sample.input_ids.count(tok.eos_token_id) == 1
    assert sorted(tok.decode(s.input_ids[:-1]) for s in samples) == sorted(docs)


def test_no_stopped_at_when_the_source_holds_exactly_max_samples(tmp_path, tok):
    path = write(tmp_path / "exact.jsonl", [qa(i) for i in range(5)])
    task = load_one(tok, TaskSpec(name="t", path=path, max_samples=5))
    assert task.report["samples"] == task.report["lines_read"] == 5
    assert "stopped_at" not in task.report
