"""Loading the base model and its tokenizer: any HF causal LM from a local directory or a hub id (or a GGUF file in
a directory, gguf.py), or the tiny random default (tiny.py); one call for all of them."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mtft.distributed import is_rank_zero
from mtft.errors import ConfigError
from mtft.models.attention import resolve_attention
from mtft.models.chat_template import ensure_chat_template
from mtft.models.config import ModelConfig
from mtft.models.gguf import forget_gguf_quantization, gguf_source
from mtft.models.tiny import build_byte_tokenizer, build_tiny_model


def model_source(name_or_path: str, gguf_file: str | None = None) -> str:
    """What transformers should load `name_or_path` from: an existing directory, or else a hub id.

    Checked before anything loads. A string that looks like a path (absolute, starting with `.` or `~`, or with more
    than one `/`) and is no directory is a mistyped path: transformers would report it as a malformed repo id."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if gguf_file is not None and not (path / gguf_file).is_file():
            found = ", ".join(sorted(p.name for p in path.glob("*.gguf"))) or "none"
            raise ConfigError(
                "model.gguf_file", f"{gguf_file}: not a file in {name_or_path} (GGUF files there: {found})"
            )
        if gguf_file is None and not (path / "config.json").is_file():
            hint = "; set model.gguf_file=NAME to load a GGUF file from it" if any(path.glob("*.gguf")) else ""
            raise ConfigError(
                "model.name_or_path", f"{name_or_path}: no config.json in it; not a model directory{hint}"
            )
        return str(path) if name_or_path.startswith("~") else name_or_path  # transformers does not expand `~`
    if name_or_path.startswith((".", "~", "/")) or name_or_path.count("/") > 1:
        raise ConfigError("model.name_or_path", f"{name_or_path}: no such directory, and not a hub id")
    return name_or_path


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer alone, before the model, so the data config can be checked against it first (it is cheap;
    the weights may not be)."""
    if cfg.name_or_path is None:
        return build_byte_tokenizer()
    source, gguf = _source(cfg, convert=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code, **gguf)
    except (OSError, ValueError) as err:  # not on the hub or offline, or a directory without tokenizer files
        raise ConfigError("model.name_or_path", f"{cfg.name_or_path}: {_cannot_load(source, err)}") from None
    ensure_chat_template(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """The same call for the tiny default and for a real checkpoint directory or hub id. Inside the engine's
    `sharded_loading` (training/engine.py), a checkpoint loads straight into ZeRO-3 shards."""
    attention = resolve_attention(cfg.attn_implementation)
    if cfg.attn_implementation == "auto" and is_rank_zero():
        print(f"mtft: attention {attention} (model.attn_implementation=auto)", flush=True)
    if cfg.name_or_path is None:
        model = build_tiny_model(cfg.tiny, tokenizer, attention)
    else:
        source, gguf = _source(cfg, convert=False)  # under ZeRO-3's sharded loading: read a cache, never write one
        try:
            model = AutoModelForCausalLM.from_pretrained(
                source,
                trust_remote_code=cfg.trust_remote_code,
                attn_implementation=attention,
                dtype=torch.float32,  # the DeepSpeed engine casts to the configured precision
                **gguf,
            )
        except OSError as err:  # e.g. a directory with a tokenizer but no weights
            raise ConfigError("model.name_or_path", f"{cfg.name_or_path}: {_cannot_load(source, err)}") from None
        if gguf:
            forget_gguf_quantization(model)
    model.config.use_cache = False  # training only; a cache would also break packed-sequence isolation
    return model


def load_model_and_tokenizer(cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = load_tokenizer(cfg)
    return load_model(cfg, tokenizer), tokenizer


def _source(cfg: ModelConfig, convert: bool) -> tuple[str, dict[str, str]]:
    """Where transformers loads from, and its GGUF argument (none but for a GGUF file read as it is)."""
    source = model_source(cfg.name_or_path, cfg.gguf_file)
    if cfg.gguf_file is None:
        return source, {}
    return gguf_source(cfg, source, convert)


def _cannot_load(source: str, err: Exception) -> str:
    where = "the directory" if Path(source).is_dir() else "not a local directory, and the hub"
    return f"{where} could not provide it: {str(err).strip().splitlines()[0]}"
