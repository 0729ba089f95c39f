"""The default that needs no files: a byte-level tokenizer and a small Llama with random weights, built from a
config (the demo, the tests and the benchmarks train it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from mtft.errors import check
from mtft.models.attention import resolve_attention
from mtft.models.chat_template import ensure_chat_template


@dataclass
class TinyModelConfig:
    """A Llama-architecture model with random weights, built from this config when no checkpoint is given."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    max_position_embeddings: int = 1024
    # Larger than the usual 0.02: the embedding is tied and frozen under LoRA, and at 0.02 its norm caps the
    # logits so low that no adapter can fit the demo tasks.
    initializer_range: float = 0.1
    init_seed: int = 0  # the base weights are a function of this seed, so a checkpoint can be reloaded exactly

    def __post_init__(self) -> None:
        sizes = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size")
        for key in (*sizes, "max_position_embeddings"):
            check(getattr(self, key) > 0, key, f"must be > 0, got {getattr(self, key)}")
        check(self.hidden_size % self.num_heads == 0, "num_heads", "must divide hidden_size")
        head_dim = self.hidden_size // self.num_heads
        # rotary embeddings rotate pairs of dimensions: an odd head size fails at the first forward
        check(head_dim % 2 == 0, "num_heads", f"hidden_size / num_heads must be even (rotary), got {head_dim}")
        check(self.num_heads % self.num_kv_heads == 0, "num_kv_heads", "must divide num_heads")
        # a standard deviation: 0 gives all-zero weights that cannot break symmetry; transformers rejects > 1
        check(0 < self.initializer_range <= 1, "initializer_range", f"must be in (0, 1], got {self.initializer_range}")
        check(self.init_seed >= 0, "init_seed", f"must be >= 0, got {self.init_seed}")


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens + ChatML specials): needs no files, encodes any text."""
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    ensure_chat_template(tokenizer)
    return tokenizer


def build_tiny_model(
    cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase, attn_implementation: str = "sdpa"
) -> PreTrainedModel:
    config = LlamaConfig(
        attn_implementation=resolve_attention(attn_implementation),
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        initializer_range=cfg.initializer_range,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
        use_cache=False,  # a cache would also turn off transformers' packed-sequence isolation
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        return LlamaForCausalLM(config)
