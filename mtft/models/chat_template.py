"""The chat template a tokenizer without one gets, so every tokenizer can render `messages` the same way."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

# Used when a tokenizer has no chat template of its own (ChatML, as in Qwen and many others).
BUILTIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def ensure_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    if not tokenizer.chat_template:
        tokenizer.chat_template = BUILTIN_CHAT_TEMPLATE
