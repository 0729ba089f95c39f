"""Reading task files into one internal form: a list of {role, content} messages per sample.

Every problem raises DataError naming the file, the line and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from mtft.config.errors import DataError

ROLES = ("system", "user", "assistant")


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, record) for each non-blank line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), None, None, "no such file")
    seen = False
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    str(path), line_no, None, f"is not valid UTF-8 ({err.reason} at byte {err.start})"
                ) from None
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(str(path), line_no, None, f"malformed JSON: {err.msg} at column {err.colno}") from None
            if not isinstance(record, dict):
                raise DataError(str(path), line_no, None, f"expected a JSON object, got {type(record).__name__}")
            seen = True
            yield line_no, record
    if not seen:
        raise DataError(str(path), None, None, "the file is empty: a task needs at least one sample")


def detect_format(record: dict, path: str, line: int) -> str:
    if "messages" in record:
        return "messages"
    raise DataError(path, line, None, f"cannot detect the format from keys {sorted(record)}; expected 'messages'")


def to_messages(record: dict, fmt: str, path: str, line: int) -> list[dict[str, str]]:
    """Validate one `messages` record: roles known, contents strings, at least one assistant turn."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(path, line, "messages", "must be a non-empty list of {role, content} objects")
    out = []
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(message, dict):
            raise DataError(path, line, field, "must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DataError(path, line, f"{field}.role", f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise DataError(path, line, f"{field}.content", f"must be a string, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(path, line, "messages", "has no assistant turn: there is nothing to train on")
    return out
