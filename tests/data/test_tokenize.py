"""mtft.data.tokenize: labels cover exactly the assistant answers, through the tokenizer's own chat template.

With build_byte_tokenizer() every byte is one token and each ChatML special is one token, so the number of prompt
tokens can be counted by hand: "<|im_start|>ROLE\\nCONTENT<|im_end|>\\n" is len(ROLE) + len(CONTENT) + 4 tokens.
"""

from __future__ import annotations

import pytest

from mtft.data.tokenize import (
    IGNORE,
    TemplateError,
    render_segments,
    tokenize_conversation,
    tokenize_example,
    tokenize_messages,
)
from mtft.models import BUILTIN_CHAT_TEMPLATE, build_byte_tokenizer, ensure_chat_template

END = "<|im_end|>\n"

REVERSED_TEMPLATE = (
    "{% for message in messages | reverse %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Prefix-stable but not ChatML: proves the tokenizer's own template is used.
PLAIN_TEMPLATE = (
    "{% for message in messages %}{{ '### ' + message['role'] + ': ' + message['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### assistant: ' }}{% endif %}"
)


@pytest.fixture
def tok():
    return build_byte_tokenizer()


def turn(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def labelled_runs(input_ids: list[int], labels: list[int]) -> list[list[int]]:
    """Maximal runs of consecutive labelled positions, as token ids."""
    runs, current = [], []
    for token, label in zip(input_ids, labels, strict=True):
        if label == IGNORE:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(token)
    return runs + ([current] if current else [])


def test_byte_tokenizer_token_counts_match_the_hand_count(tok):
    # the rest of this file counts tokens by hand on this assumption
    assert len(tok("<|im_start|>user\nhé<|im_end|>\n", add_special_tokens=False)["input_ids"]) == 1 + 4 + 1 + 3 + 2
    assert tok.chat_template == BUILTIN_CHAT_TEMPLATE


def test_single_turn_labels_only_the_answer(tok):
    messages = [turn("user", "What is 2 + 2?"), turn("assistant", "4")]
    input_ids, labels = tokenize_messages(tok, messages)
    assert tok.decode(input_ids) == tok.apply_chat_template(messages, tokenize=False)
    prompt_len = (4 + len("What is 2 + 2?") + 4) + (1 + len("assistant") + 1)  # user turn + generation prompt
    assert prompt_len == 33
    assert len(input_ids) == len(labels) == prompt_len + 1 + 2
    assert labels[:prompt_len] == [IGNORE] * prompt_len
    assert labels[prompt_len:] == input_ids[prompt_len:]
    assert tok.decode([t for t, lab in zip(input_ids, labels, strict=True) if lab != IGNORE]) == "4" + END


def test_answer_with_multibyte_characters(tok):
    messages = [turn("user", "¿Qué?"), turn("assistant", "naïve ✓")]
    input_ids, labels = tokenize_messages(tok, messages)
    runs = labelled_runs(input_ids, labels)
    assert [tok.decode(run) for run in runs] == ["naïve ✓" + END]
    assert len(runs[0]) == len("naïve ✓".encode()) + 2


def test_multi_turn_with_system_labels_exactly_both_answers(tok):
    messages = [
        turn("system", "You are terse."),
        turn("user", "Reverse: abc"),
        turn("assistant", "cba"),
        turn("user", "Reverse: xy"),
        turn("assistant", "yx"),
    ]
    input_ids, labels = tokenize_messages(tok, messages)
    assert tok.decode(input_ids) == tok.apply_chat_template(messages, tokenize=False)
    runs = labelled_runs(input_ids, labels)
    assert [tok.decode(run) for run in runs] == ["cba" + END, "yx" + END]
    # positions by hand: system turn, user turn, generation prompt, then the first answer
    first = (6 + len("You are terse.") + 4) + (4 + len("Reverse: abc") + 4) + 11
    assert labels[first - 1] == IGNORE
    assert labels[first : first + 5] == input_ids[first : first + 5]
    second = first + 5 + (4 + len("Reverse: xy") + 4) + 11
    assert labels[first + 5 : second] == [IGNORE] * (second - first - 5)
    assert labels[second:] == input_ids[second:]
    assert len(input_ids) == second + 4
    assert sum(lab != IGNORE for lab in labels) == 5 + 4


def test_trailing_user_turn_is_not_labelled(tok):
    messages = [turn("user", "a"), turn("assistant", "b"), turn("user", "c")]
    input_ids, labels = tokenize_messages(tok, messages)
    assert [tok.decode(run) for run in labelled_runs(input_ids, labels)] == ["b" + END]
    assert labels[-(4 + 1 + 4) :] == [IGNORE] * 9


def test_empty_answer_still_trains_the_end_of_turn(tok):
    input_ids, labels = tokenize_messages(tok, [turn("user", "q"), turn("assistant", "")])
    assert [tok.decode(run) for run in labelled_runs(input_ids, labels)] == [END]


def test_train_on_prompt_labels_everything(tok):
    messages = [
        turn("system", "s"),
        turn("user", "q"),
        turn("assistant", "a"),
        turn("user", "q2"),
        turn("assistant", "b"),
    ]
    input_ids, labels = tokenize_messages(tok, messages, train_on_prompt=True)
    assert labels == input_ids
    assert IGNORE not in labels
    assert tokenize_messages(tok, messages, train_on_prompt=False)[0] == input_ids


@pytest.mark.parametrize("train_on_prompt", [False, True])
def test_the_prompt_ends_where_the_first_answer_begins(tok, train_on_prompt):
    """System turn, user turn and the assistant header "<|im_start|>assistant\\n" (ChatML, one token a byte),
    whatever the labels say."""
    messages = [turn("system", "s"), turn("user", "q"), turn("assistant", "a"), turn("user", "q2")]
    input_ids, _, prompt_length = tokenize_conversation(tok, messages, train_on_prompt)
    assert prompt_length == (len("system") + 1 + 4) + (len("user") + 1 + 4) + (1 + len("assistant") + 1) == 31
    assert tok.decode(input_ids[prompt_length:]).startswith("a")


def test_plain_text_is_all_prompt(tok):
    from mtft.data.formats import Example

    input_ids, labels, prompt_length = tokenize_example(tok, Example(messages=[], text="hello"))
    assert prompt_length == len(input_ids) == len("hello") + 1  # and its EOS


def test_render_segments_concatenate_to_the_full_render(tok):
    messages = [
        turn("system", "s"),
        turn("user", "q"),
        turn("assistant", "a"),
        turn("user", "r"),
        turn("assistant", "b"),
    ]
    segments = render_segments(tok, messages)
    assert "".join(text for text, _ in segments) == tok.apply_chat_template(messages, tokenize=False)
    assert [text for text, is_answer in segments if is_answer] == ["a" + END, "b" + END]
    assert segments[0] == (
        "<|im_start|>system\ns" + END + "<|im_start|>user\nq" + END + "<|im_start|>assistant\n",
        False,
    )
    assert all(text for text, _ in segments)  # no empty segments


def test_the_tokenizers_own_template_is_used(tok):
    tok.chat_template = PLAIN_TEMPLATE
    messages = [turn("user", "hi"), turn("assistant", "yo"), turn("user", "x"), turn("assistant", "z")]
    input_ids, labels = tokenize_messages(tok, messages)
    assert tok.decode(input_ids) == "### user: hi\n### assistant: yo\n### user: x\n### assistant: z\n"
    assert [tok.decode(run) for run in labelled_runs(input_ids, labels)] == ["yo\n", "z\n"]


def test_ensure_chat_template_sets_the_builtin_when_missing(tok):
    tok.chat_template = None
    ensure_chat_template(tok)
    assert tok.chat_template == BUILTIN_CHAT_TEMPLATE


def test_ensure_chat_template_keeps_an_existing_template(tok):
    tok.chat_template = PLAIN_TEMPLATE
    ensure_chat_template(tok)
    assert tok.chat_template == PLAIN_TEMPLATE


def test_builtin_template_is_chatml(tok):
    messages = [turn("user", "q"), turn("assistant", "a")]
    rendered = tok.apply_chat_template(messages, tokenize=False, chat_template=BUILTIN_CHAT_TEMPLATE)
    assert rendered == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n"
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"


def test_non_prefix_stable_template_raises(tok):
    tok.chat_template = REVERSED_TEMPLATE
    with pytest.raises(TemplateError, match="prefix-stable"):
        tokenize_messages(tok, [turn("user", "q"), turn("assistant", "a")])


def test_template_that_rewrites_earlier_turns_raises(tok):
    # The header depends on the number of turns, so a shorter prefix renders differently.
    tok.chat_template = "{{ messages | length }}\n" + PLAIN_TEMPLATE
    with pytest.raises(TemplateError):
        render_segments(tok, [turn("user", "q"), turn("assistant", "a")])
    assert issubclass(TemplateError, ValueError)
