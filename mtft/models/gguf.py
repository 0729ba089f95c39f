"""GGUF checkpoints (llama.cpp's format, `model.gguf_file`): read by transformers' reader, dequantized, and from
then on an ordinary float model. The reader is slow (about 30 s for a 135M model on a CPU), so the first load keeps
the dequantized model as safetensors in a cache ($MTFT_GGUF_CACHE) that later processes load instead."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from mtft.distributed import is_rank_zero
from mtft.errors import ConfigError
from mtft.models.config import ModelConfig


def gguf_source(cfg: ModelConfig, source: str, convert: bool) -> tuple[str, dict[str, str]]:
    """Where transformers loads `cfg.gguf_file` (in directory `source`) from, and its GGUF argument: the file's
    dequantized copy in the cache when there is one (made here when `convert`: the tokenizer loads first, outside
    ZeRO-3's sharded loading), else the GGUF itself."""
    if cfg.gguf_cache:
        copy = gguf_cache_path(Path(source) / cfg.gguf_file)
        if not (copy / "config.json").is_file() and convert:
            _dequantize_into(cfg, source, copy)
        if (copy / "config.json").is_file():
            return str(copy), {}
    return source, gguf_argument(cfg)


def gguf_argument(cfg: ModelConfig) -> dict[str, str]:
    """transformers' argument for a GGUF checkpoint; its reader needs the `gguf` package (the `gguf` extra)."""
    if cfg.gguf_file is None:
        return {}
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError("model.gguf_file", "reading a GGUF file needs the gguf package: pip install 'mtft[gguf]'")
    return {"gguf_file": cfg.gguf_file}


def gguf_cache_path(gguf: Path) -> Path:
    """The cache directory of a GGUF file: a new one when the file, or the transformers that reads it, changes."""
    stat = gguf.stat()
    key = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    root = Path(os.environ.get("MTFT_GGUF_CACHE", "~/.cache/mtft/gguf")).expanduser()
    return root / f"{gguf.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _dequantize_into(cfg: ModelConfig, source: str, copy: Path) -> None:
    """Read the GGUF once and save tokenizer and fp32 weights as an ordinary model directory. Written beside the
    target and renamed into place, so a killed process or a second rank converting at the same time never leaves
    a half-written copy that a later load would take."""
    gguf = gguf_argument(cfg)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code, **gguf)
    model = AutoModelForCausalLM.from_pretrained(
        source, trust_remote_code=cfg.trust_remote_code, dtype=torch.float32, **gguf
    )
    forget_gguf_quantization(model)
    partial = copy.with_name(f"{copy.name}.partial-{os.getpid()}")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    try:
        partial.rename(copy)
    except OSError:  # another process finished first: its copy is the same
        shutil.rmtree(partial, ignore_errors=True)
    if is_rank_zero():
        print(f"mtft: {cfg.gguf_file} dequantized once into {copy} (model.gguf_cache=false reads the GGUF each time)")


def forget_gguf_quantization(model: PreTrainedModel) -> None:
    """transformers dequantizes a GGUF checkpoint as it loads, yet keeps its quantizer, which makes the model refuse
    `save_pretrained` ("quantized with gguf and is not serializable") and look quantized to PEFT. The weights are
    plain float tensors by then: drop the marks, so exports and merges are ordinary safetensors models."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
