"""The model section of the config: which base model to load, from where, with which attention."""

from __future__ import annotations

from dataclasses import dataclass, field

from mtft.errors import check_choice
from mtft.models.attention import ATTENTION
from mtft.models.tiny import TinyModelConfig


@dataclass
class ModelConfig:
    name_or_path: str | None = None  # local directory or hub id; None builds the tiny random model (tiny.py)
    # a GGUF file (llama.cpp's format) in name_or_path to load instead of config.json and safetensors: read by
    # transformers with the `gguf` package, dequantized, and from then on an ordinary model (exports included)
    gguf_file: str | None = None
    # keep the dequantized GGUF as safetensors in $MTFT_GGUF_CACHE (default ~/.cache/mtft/gguf), so that later
    # processes skip transformers' GGUF reader (about 30 s for a 135M model on a CPU); 4 bytes a parameter on disk
    gguf_cache: bool = True
    trust_remote_code: bool = False
    # auto: flash_attention_2 where flash-attn imports and CUDA is present (packed rows then run as varlen, no
    # mask), else sdpa (packed rows get a block-diagonal mask, O(length²) per row); see resolve_attention
    attn_implementation: str = "auto"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)

    def __post_init__(self) -> None:
        check_choice(self.attn_implementation, "attn_implementation", ATTENTION)
