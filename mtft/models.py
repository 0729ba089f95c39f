"""Base model and tokenizer: any HF causal LM from a local path or hub id, or the tiny random default."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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

from mtft.errors import ConfigError, check, check_choice

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


@dataclass
class ModelConfig:
    name_or_path: str | None = None  # local directory or hub id; None builds the tiny random model below
    trust_remote_code: bool = False
    attn_implementation: str = "sdpa"  # eager | sdpa | flash_attention_2
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)

    def __post_init__(self) -> None:
        check_choice(self.attn_implementation, "attn_implementation", ("eager", "sdpa", "flash_attention_2"))


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


def model_source(name_or_path: str) -> str:
    """What transformers should load `name_or_path` from: an existing directory, or else a hub id.

    Checked before anything loads. A string that looks like a path (absolute, starting with `.` or `~`, or with more
    than one `/`) and is no directory is a mistyped path: transformers would report it as a malformed repo id."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError("model.name_or_path", f"{name_or_path}: no config.json in it; not a model directory")
        return str(path) if name_or_path.startswith("~") else name_or_path  # transformers does not expand `~`
    if name_or_path.startswith((".", "~", "/")) or name_or_path.count("/") > 1:
        raise ConfigError("model.name_or_path", f"{name_or_path}: no such directory, and not a hub id")
    return name_or_path


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer alone, before the model, so the data config can be checked against it first (it is cheap;
    the weights may not be)."""
    if cfg.name_or_path is None:
        return build_byte_tokenizer()
    source = model_source(cfg.name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as err:  # not on the hub or offline, or a directory without tokenizer files
        raise ConfigError("model.name_or_path", f"{cfg.name_or_path}: {_cannot_load(source, err)}") from None
    ensure_chat_template(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """The same call for the tiny default and for a real checkpoint directory or hub id. Inside the engine's
    `sharded_loading` (training/engine.py), a checkpoint loads straight into ZeRO-3 shards."""
    if cfg.name_or_path is None:
        model = build_tiny_model(cfg.tiny, tokenizer)
    else:
        source = model_source(cfg.name_or_path)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                source,
                trust_remote_code=cfg.trust_remote_code,
                attn_implementation=cfg.attn_implementation,
                dtype=torch.float32,  # the DeepSpeed engine casts to the configured precision
            )
        except OSError as err:  # e.g. a directory with a tokenizer but no weights
            raise ConfigError("model.name_or_path", f"{cfg.name_or_path}: {_cannot_load(source, err)}") from None
    model.config.use_cache = False  # training only; a cache would also break packed-sequence isolation
    return model


def load_model_and_tokenizer(cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = load_tokenizer(cfg)
    return load_model(cfg, tokenizer), tokenizer


def _cannot_load(source: str, err: Exception) -> str:
    where = "the directory" if Path(source).is_dir() else "not a local directory, and the hub"
    return f"{where} could not provide it: {str(err).strip().splitlines()[0]}"
