"""Conversations to token ids and labels, through the tokenizer's own chat template.

Labels are -100 everywhere but assistant turns (unless train_on_prompt). The assistant spans are found by
rendering growing prefixes of the conversation: the text a turn adds after the generation prompt is the
answer. This works for any prefix-stable template; one that is not (e.g. it rewrites earlier turns) is an error.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from mtft.data.formats import Example

IGNORE = -100

# Used when a tokenizer has no chat template of its own (ChatML, as in Qwen and many others).
BUILTIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TemplateError(ValueError):
    pass


def ensure_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    if not tokenizer.chat_template:
        tokenizer.chat_template = BUILTIN_CHAT_TEMPLATE


def render_segments(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, is_answer) segments that concatenate to the full render."""

    def render(msgs: list[dict], generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)

    full = render(messages, False)
    segments, done = [], 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt, with_answer = render(messages[:i], True), render(messages[: i + 1], False)
        if not (full.startswith(with_answer) and with_answer.startswith(prompt) and len(prompt) >= done):
            raise TemplateError("the chat template is not prefix-stable; cannot locate assistant turns")
        segments += [(full[done : len(prompt)], False), (full[len(prompt) : len(with_answer)], True)]
        done = len(with_answer)
    segments.append((full[done:], False))
    return [(text, is_answer) for text, is_answer in segments if text]


def tokenize_messages(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], train_on_prompt: bool = False
) -> tuple[list[int], list[int]]:
    return tokenize_conversation(tokenizer, messages, train_on_prompt)[:2]


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], train_on_prompt: bool = False
) -> tuple[list[int], list[int], int]:
    """(input_ids, labels, prompt_length): the prompt is everything before the first assistant turn's answer
    (the generation prompt included), what a model sees when it is asked to answer (see Sample.prompt)."""
    input_ids: list[int] = []
    labels: list[int] = []
    prompt_length = None
    for text, is_answer in render_segments(tokenizer, messages):
        if is_answer and prompt_length is None:
            prompt_length = len(input_ids)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if (is_answer or train_on_prompt) else [IGNORE] * len(ids)
    return input_ids, labels, len(input_ids) if prompt_length is None else prompt_length


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase, example: Example, train_on_prompt: bool = False
) -> tuple[list[int], list[int], int]:
    """A chat through the template (labels on answers), or plain text trained on every token, ending in EOS.
    Returns (input_ids, labels, prompt_length); plain text has no assistant turn, so all of it is prompt."""
    if example.text is None:
        return tokenize_conversation(tokenizer, example.messages, train_on_prompt)
    input_ids = tokenizer(example.text)["input_ids"]
    if tokenizer.eos_token_id is not None and (not input_ids or input_ids[-1] != tokenizer.eos_token_id):
        input_ids.append(tokenizer.eos_token_id)
    return input_ids, list(input_ids), len(input_ids)
