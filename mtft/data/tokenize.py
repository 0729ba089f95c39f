"""Conversations to token ids and labels, through the tokenizer's own chat template.

Labels are -100 everywhere but assistant turns (unless train_on_prompt). The assistant spans are found by
rendering growing prefixes of the conversation: the text a turn adds after the generation prompt is the
answer. This works for any prefix-stable template; one that is not (e.g. it rewrites earlier turns) is an error.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from mtft.data.config import DataConfig
from mtft.data.formats import Example
from mtft.errors import ConfigError

IGNORE = -100


class TemplateError(ValueError):
    pass


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


def chat_template_overhead(tokenizer: PreTrainedTokenizerBase) -> int:
    """Tokens the chat template adds to a one-turn conversation whose user and assistant turns are empty."""
    empty_turn = [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]
    return len(tokenize_messages(tokenizer, empty_turn)[0])


def check_max_seq_len(data: DataConfig, tokenizer: PreTrainedTokenizerBase) -> None:
    """A data.max_seq_len that the template's own tokens fill leaves no room for any sample: every one would be
    dropped or truncated to nothing to learn from, which the data report would only tell after tokenizing it all.
    Tasks given as plain text (format: text) use no template."""
    if all(task.format == "text" for task in data.tasks):
        return
    overhead = chat_template_overhead(tokenizer)
    if data.max_seq_len <= overhead:
        raise ConfigError(
            "data.max_seq_len",
            f"{data.max_seq_len} leaves no room for text: the chat template alone takes {overhead} tokens "
            f"(a one-turn conversation with empty user and assistant turns); use more than {overhead}",
        )
