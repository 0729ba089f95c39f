"""The base model and its tokenizer, one job a module:

- `config.py`: ModelConfig, the model section of the config;
- `loading.py`: the tokenizer, then the model, from a local directory, a hub id or the tiny default;
- `gguf.py`: a GGUF file read, dequantized and cached as an ordinary model;
- `tiny.py`: the default that needs no files (a byte tokenizer, a small random Llama) and its TinyModelConfig;
- `chat_template.py`: the template a tokenizer without one gets;
- `attention.py`: which attention runs, and the masks built for it at every step;
- `execution.py`: eval mode for a block of work, gradient checkpointing and compiling the decoder blocks.

Everything public is re-exported here: `from mtft.models import load_model_and_tokenizer`.
"""

from __future__ import annotations

from mtft.models.attention import (
    ATTENTION,
    DENSE_MASK_ATTENTION,
    attention_inputs,
    packed_sample_ids,
    resolve_attention,
)
from mtft.models.chat_template import BUILTIN_CHAT_TEMPLATE, ensure_chat_template
from mtft.models.config import ModelConfig
from mtft.models.execution import Switchable, compile_blocks, enable_gradient_checkpointing, eval_mode
from mtft.models.gguf import gguf_cache_path
from mtft.models.loading import load_model, load_model_and_tokenizer, load_tokenizer, model_source
from mtft.models.tiny import TinyModelConfig, build_byte_tokenizer, build_tiny_model

__all__ = [
    "ATTENTION",
    "BUILTIN_CHAT_TEMPLATE",
    "DENSE_MASK_ATTENTION",
    "ModelConfig",
    "Switchable",
    "TinyModelConfig",
    "attention_inputs",
    "build_byte_tokenizer",
    "build_tiny_model",
    "compile_blocks",
    "enable_gradient_checkpointing",
    "ensure_chat_template",
    "eval_mode",
    "gguf_cache_path",
    "load_model",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "model_source",
    "packed_sample_ids",
    "resolve_attention",
]
