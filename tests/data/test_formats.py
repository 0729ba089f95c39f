"""mtft.data.formats: reading JSONL task files and validating `messages` records, with precise error locations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtft.config.errors import DataError, UserError
from mtft.data.formats import ROLES, detect_format, read_jsonl, to_messages

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def read_error(path: Path) -> str:
    with pytest.raises(DataError) as info:
        list(read_jsonl(path))
    return str(info.value)


def messages_error(messages, path: str = "f.jsonl", line: int = 3) -> str:
    record = {"messages": messages}
    with pytest.raises(DataError) as info:
        to_messages(record, "messages", path, line)
    return str(info.value)


# ---- read_jsonl -------------------------------------------------------------------------------------------------


def test_read_jsonl_yields_records_with_physical_line_numbers(tmp_path):
    path = write_lines(tmp_path / "f.jsonl", [json.dumps({"a": 1}), "", "   ", json.dumps({"b": 2}), "\t"])
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (4, {"b": 2})]


def test_read_jsonl_accepts_str_path_and_last_line_without_newline(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps({"a": 1}) + "\n" + json.dumps({"a": "é"}), encoding="utf-8")
    assert list(read_jsonl(str(path))) == [(1, {"a": 1}), (2, {"a": "é"})]


def test_read_jsonl_handles_crlf_line_endings(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"a": 1}\r\n\r\n{"a": 2}\r\n')
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (3, {"a": 2})]


def test_malformed_json_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "f.jsonl", [json.dumps(GOOD), "", '{"messages": [', json.dumps(GOOD)])
    message = read_error(path)
    assert f"{path}:3:" in message
    assert "malformed JSON" in message


def test_malformed_json_is_raised_lazily_after_earlier_records(tmp_path):
    path = write_lines(tmp_path / "f.jsonl", [json.dumps(GOOD), "{not json"])
    records = read_jsonl(path)
    assert next(records) == (1, GOOD)
    with pytest.raises(DataError, match=r":2: malformed JSON"):
        next(records)


@pytest.mark.parametrize(
    ("line", "kind"), [("[1, 2]", "list"), ('"text"', "str"), ("42", "int"), ("null", "NoneType")]
)
def test_non_object_line_names_file_line_and_type(tmp_path, line, kind):
    path = write_lines(tmp_path / "f.jsonl", [json.dumps(GOOD), line])
    message = read_error(path)
    assert f"{path}:2:" in message
    assert f"expected a JSON object, got {kind}" in message


def test_non_utf8_bytes_name_file_and_line(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n\n" + b'{"messages": "\xff\xfe"}\n')
    message = read_error(path)
    assert f"{path}:3:" in message
    assert "not valid UTF-8" in message
    assert "at byte 14" in message  # the offending byte's offset within the line


@pytest.mark.parametrize("content", [b"", b"\n", b"\n  \n\t\n"])
def test_empty_file_names_the_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    message = read_error(path)
    assert message.startswith(f"{path}:")
    assert "empty" in message


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    message = read_error(path)
    assert message.startswith(f"{path}:")
    assert "no such file" in message


def test_a_directory_is_not_a_task_file(tmp_path):
    assert "no such file" in read_error(tmp_path)


def test_data_error_is_a_user_error_with_the_documented_layout():
    err = DataError("f.jsonl", 3, "messages[1].role", "bad")
    assert isinstance(err, UserError)
    assert str(err) == "f.jsonl:3: field 'messages[1].role' bad"
    assert str(DataError("f.jsonl", None, None, "gone")) == "f.jsonl: gone"


# ---- detect_format ----------------------------------------------------------------------------------------------


def test_detect_format_recognises_messages():
    assert detect_format(GOOD, "f.jsonl", 1) == "messages"


def test_undetectable_format_names_file_line_and_keys():
    with pytest.raises(DataError) as info:
        detect_format({"prompt": "p", "completion": "c"}, "f.jsonl", 7)
    message = str(info.value)
    assert message.startswith("f.jsonl:7:")
    assert "cannot detect the format" in message
    assert "['completion', 'prompt']" in message


# ---- to_messages ------------------------------------------------------------------------------------------------


def test_to_messages_keeps_only_role_and_content_in_order():
    record = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "q", "name": "bob"},
            {"role": "assistant", "content": "", "extra": 1},
            {"role": "user", "content": "q2"},
        ],
        "id": 9,
    }
    assert to_messages(record, "messages", "f.jsonl", 1) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "q2"},
    ]
    assert ROLES == ("system", "user", "assistant")


def test_missing_messages_names_file_line_and_field():
    with pytest.raises(DataError) as info:
        to_messages({"text": "hi"}, "messages", "f.jsonl", 3)
    message = str(info.value)
    assert message.startswith("f.jsonl:3:")
    assert "field 'messages'" in message
    assert "non-empty list" in message


@pytest.mark.parametrize("messages", [[], "hello", {"role": "user"}, None])
def test_messages_must_be_a_non_empty_list(messages):
    message = messages_error(messages)
    assert message.startswith("f.jsonl:3: field 'messages'")
    assert "non-empty list" in message


def test_a_message_that_is_not_an_object_names_its_index():
    message = messages_error([{"role": "user", "content": "q"}, "assistant: a"])
    assert message.startswith("f.jsonl:3: field 'messages[1]'")
    assert "must be an object" in message


@pytest.mark.parametrize("role", ["bot", "Assistant", None, 1])
def test_unknown_role_names_file_line_and_field(role):
    message = messages_error([{"role": "user", "content": "q"}, {"role": role, "content": "a"}])
    assert message.startswith("f.jsonl:3: field 'messages[1].role'")
    assert f"unknown role {role!r}" in message
    assert "system, user, assistant" in message


@pytest.mark.parametrize(("content", "kind"), [(5, "int"), (None, "NoneType"), (["a"], "list"), ({"t": "a"}, "dict")])
def test_non_string_content_names_file_line_and_field(content, kind):
    message = messages_error([{"role": "user", "content": content}, {"role": "assistant", "content": "a"}], line=12)
    assert message.startswith("f.jsonl:12: field 'messages[0].content'")
    assert f"must be a string, got {kind}" in message


def test_missing_content_is_non_string_content():
    message = messages_error([{"role": "user", "content": "q"}, {"role": "assistant"}])
    assert "field 'messages[1].content'" in message


def test_no_assistant_turn_names_file_line_and_field():
    message = messages_error([{"role": "system", "content": "s"}, {"role": "user", "content": "q"}], path="t/x.jsonl")
    assert message.startswith("t/x.jsonl:3: field 'messages'")
    assert "no assistant turn" in message


def test_first_problem_in_message_order_is_reported():
    message = messages_error([{"role": "user", "content": 1}, {"role": "robot", "content": "a"}])
    assert "messages[0].content" in message
