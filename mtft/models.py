"""Base model and tokenizer: any HF causal LM from a local path or hub id, or the tiny random default."""

from __future__ import annotations

import contextlib

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from mtft.config.schema import ModelConfig, TinyModelConfig
from mtft.data.tokenize import ensure_chat_template


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


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    config = LlamaConfig(
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


@contextlib.contextmanager
def _sharded_loading(deepspeed_config: dict | None):
    """transformers loads into ZeRO-3 shards while an HfDeepSpeedConfig object is alive (it keeps a weak
    reference): only for this load, not for whatever is built later."""
    if deepspeed_config is None or deepspeed_config.get("zero_optimization", {}).get("stage") != 3:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig

    alive = HfDeepSpeedConfig(deepspeed_config)
    try:
        yield
    finally:
        del alive


def load_model_and_tokenizer(
    cfg: ModelConfig, deepspeed_config: dict | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The same call for the tiny default and for a real checkpoint directory or hub id.

    Given a ZeRO-3 `deepspeed_config`, a checkpoint loads straight into shards (transformers runs
    deepspeed.zero.Init), so no rank ever holds the whole model in memory."""
    if cfg.name_or_path is None:
        tokenizer = build_byte_tokenizer()
        model = build_tiny_model(cfg.tiny, tokenizer)
    else:
        tokenizer = AutoTokenizer.from_pretrained(cfg.name_or_path, trust_remote_code=cfg.trust_remote_code)
        with _sharded_loading(deepspeed_config):
            model = AutoModelForCausalLM.from_pretrained(
                cfg.name_or_path,
                trust_remote_code=cfg.trust_remote_code,
                attn_implementation=cfg.attn_implementation,
                dtype=torch.float32,  # the DeepSpeed engine casts to the configured precision
            )
        ensure_chat_template(tokenizer)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    model.config.use_cache = False  # training only; a cache would also break packed-sequence isolation
    return model, tokenizer
