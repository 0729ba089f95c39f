"""User formats, normalised to one internal form: an Example holding role/content messages (an optional system
message first), or plain text for continued pre-training.

| format            | fields                                                    |
|-------------------|-----------------------------------------------------------|
| messages          | messages: [{role: system|user|assistant, content}]        |
| sharegpt          | conversations: [{from: system|human|user|gpt|assistant, value}], optional system |
| chat_rounds       | chat_rounds: [{role: system|human|user|bot|assistant, content}] (MFTCoder) |
| alpaca            | instruction, optional input, output, optional system      |
| prompt_response   | prompt and response (or completion), optional system      |
| text              | text                                                      |

`format: auto` picks the first format whose key fields a record has, in the order above. `fields` maps these
names to a dataset's own column names. Every problem is a DataError naming the location and the field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mtft.data.sources import Location


@dataclass
class Example:
    messages: list[dict[str, str]]  # empty for plain text
    text: str | None = None


SYSTEM, USER, ASSISTANT = "system", "user", "assistant"


def _turns(record: dict, where: Location, key: str, role_key: str, text_key: str, roles: dict[str, str]) -> Example:
    turns = record.get(key)
    if not isinstance(turns, list) or not turns:
        raise where.error(key, f"must be a non-empty list of {{{role_key}, {text_key}}} objects", "missing_field")
    messages = _system(record, where)
    lead = len(messages)
    for i, turn in enumerate(turns):
        field = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise where.error(field, f"must be an object with '{role_key}' and '{text_key}'", "bad_type")
        role, content = turn.get(role_key), turn.get(text_key)
        if role not in roles:
            known = ", ".join(roles)
            raise where.error(f"{field}.{role_key}", f"unknown role {role!r}; expected one of {known}", "unknown_role")
        messages.append({"role": roles[role], "content": _string(content, where, f"{field}.{text_key}")})
    return Example(_check_turn_order(messages, where, key, lead))


def _system(record: dict, where: Location) -> list[dict[str, str]]:
    system = record.get("system")
    return [{"role": SYSTEM, "content": _string(system, where, "system")}] if system else []


def _string(value: Any, where: Location, field: str) -> str:
    if value is None:
        raise where.error(field, "is missing", "missing_field")
    if not isinstance(value, str):
        raise where.error(field, f"must be a string, got {type(value).__name__}", "bad_type")
    return value


def _check_turn_order(messages: list[dict[str, str]], where: Location, key: str, lead: int) -> list[dict[str, str]]:
    """One optional system message first, then user and assistant strictly alternating from a user turn.
    `lead` messages came from outside the list (a top-level system field), for the index in the error."""
    offset = 1 if messages and messages[0]["role"] == SYSTEM else 0
    for i, message in enumerate(messages[offset:]):
        expected = USER if i % 2 == 0 else ASSISTANT
        if message["role"] != expected:
            raise where.error(
                f"{key}[{i + offset - lead}]",
                f"roles must alternate user/assistant after an optional system message; found "
                f"'{message['role']}' where '{expected}' belongs",
                "roles_not_alternating",
            )
    if not any(m["role"] == ASSISTANT for m in messages):
        raise where.error(key, "has no assistant turn: there is nothing to train on", "no_assistant_turn")
    return messages


def _messages(record: dict, where: Location) -> Example:
    return _turns(record, where, "messages", "role", "content", {SYSTEM: SYSTEM, USER: USER, ASSISTANT: ASSISTANT})


SHAREGPT_ROLES = {"system": SYSTEM, "human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT}
CHAT_ROUNDS_ROLES = {"system": SYSTEM, "human": USER, "user": USER, "bot": ASSISTANT, "assistant": ASSISTANT}


def _sharegpt(record: dict, where: Location) -> Example:
    return _turns(record, where, "conversations", "from", "value", SHAREGPT_ROLES)


def _chat_rounds(record: dict, where: Location) -> Example:
    return _turns(record, where, "chat_rounds", "role", "content", CHAT_ROUNDS_ROLES)


def _alpaca(record: dict, where: Location) -> Example:
    instruction = _string(record.get("instruction"), where, "instruction")
    extra = record.get("input") or ""
    prompt = f"{instruction}\n\n{_string(extra, where, 'input')}" if extra else instruction
    output = _string(record.get("output"), where, "output")
    return Example(
        [*_system(record, where), {"role": USER, "content": prompt}, {"role": ASSISTANT, "content": output}]
    )


def _prompt_response(record: dict, where: Location) -> Example:
    prompt = _string(record.get("prompt"), where, "prompt")
    answer_key = "response" if "response" in record else "completion"
    answer = _string(record.get(answer_key), where, answer_key)
    return Example(
        [*_system(record, where), {"role": USER, "content": prompt}, {"role": ASSISTANT, "content": answer}]
    )


def _text(record: dict, where: Location) -> Example:
    text = _string(record.get("text"), where, "text")
    if not text:
        raise where.error("text", "is empty", "empty_text")
    return Example([], text)


# name -> (fields whose presence identifies the format for `auto`, converter); the order is detection order
FORMATS: dict[str, tuple[tuple[str, ...], Callable[[dict, Location], Example]]] = {
    "messages": (("messages",), _messages),
    "sharegpt": (("conversations",), _sharegpt),
    "chat_rounds": (("chat_rounds",), _chat_rounds),
    "alpaca": (("instruction", "output"), _alpaca),
    "prompt_response": (("prompt",), _prompt_response),
    "text": (("text",), _text),
}


def detect_format(record: dict, where: Location) -> str:
    for name, (keys, _) in FORMATS.items():
        if all(k in record for k in keys):
            return name
    known = "; ".join(f"{name}: {', '.join(keys)}" for name, (keys, _) in FORMATS.items())
    raise where.error(None, f"cannot detect the format from fields {sorted(record)}; known: {known}", "unknown_format")


def rename_fields(record: dict, fields: dict[str, str]) -> dict:
    """Apply a task's field mapping {our name: their column}."""
    if not fields:
        return record
    renamed = {k: v for k, v in record.items() if k not in fields.values()}
    renamed.update({ours: record[theirs] for ours, theirs in fields.items() if theirs in record})
    return renamed


def to_example(record: dict, fmt: str, where: Location) -> Example:
    return FORMATS[fmt][1](record, where)
