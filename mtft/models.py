"""Base model and tokenizer: any HF causal LM from a local path or hub id, or the tiny random default."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from mtft.distributed import is_rank_zero
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


ATTENTION = ("auto", "flash_attention_2", "sdpa", "eager", "flex_attention")


def resolve_attention(name: str) -> str:
    """`auto` made concrete: FlashAttention 2 when it can run here, sdpa otherwise. Never a kernel from a hub."""
    if name != "auto":
        return name
    usable = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    return "flash_attention_2" if usable else "sdpa"


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
            _forget_gguf_quantization(model)
    model.config.use_cache = False  # training only; a cache would also break packed-sequence isolation
    return model


def load_model_and_tokenizer(cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = load_tokenizer(cfg)
    return load_model(cfg, tokenizer), tokenizer


def _gguf(cfg: ModelConfig) -> dict[str, str]:
    """transformers' argument for a GGUF checkpoint; its reader needs the `gguf` package (the `gguf` extra)."""
    if cfg.gguf_file is None:
        return {}
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError("model.gguf_file", "reading a GGUF file needs the gguf package: pip install 'mtft[gguf]'")
    return {"gguf_file": cfg.gguf_file}


def _source(cfg: ModelConfig, convert: bool) -> tuple[str, dict[str, str]]:
    """Where transformers loads from, and its GGUF argument: a GGUF's dequantized copy in the cache when there is
    one (made here when `convert`: the tokenizer loads first, outside ZeRO-3's sharded loading), else the GGUF."""
    source = model_source(cfg.name_or_path, cfg.gguf_file)
    if cfg.gguf_file is None:
        return source, {}
    if cfg.gguf_cache:
        copy = gguf_cache_path(Path(source) / cfg.gguf_file)
        if not (copy / "config.json").is_file() and convert:
            _dequantize_into(cfg, source, copy)
        if (copy / "config.json").is_file():
            return str(copy), {}
    return source, _gguf(cfg)


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
    gguf = _gguf(cfg)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code, **gguf)
    model = AutoModelForCausalLM.from_pretrained(
        source, trust_remote_code=cfg.trust_remote_code, dtype=torch.float32, **gguf
    )
    _forget_gguf_quantization(model)
    partial = copy.with_name(f"{copy.name}.partial-{os.getpid()}")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    try:
        partial.rename(copy)
    except OSError:  # another process finished first: its copy is the same
        shutil.rmtree(partial, ignore_errors=True)
    if is_rank_zero():
        print(f"mtft: {cfg.gguf_file} dequantized once into {copy} (model.gguf_cache=false reads the GGUF each time)")


def _forget_gguf_quantization(model: PreTrainedModel) -> None:
    """transformers dequantizes a GGUF checkpoint as it loads, yet keeps its quantizer, which makes the model refuse
    `save_pretrained` ("quantized with gguf and is not serializable") and look quantized to PEFT. The weights are
    plain float tensors by then: drop the marks, so exports and merges are ordinary safetensors models."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _cannot_load(source: str, err: Exception) -> str:
    where = "the directory" if Path(source).is_dir() else "not a local directory, and the hub"
    return f"{where} could not provide it: {str(err).strip().splitlines()[0]}"


def enable_gradient_checkpointing(model: nn.Module, recomputation: Callable[[], AbstractContextManager]) -> None:
    """Recompute each decoder layer's activations in the backward instead of keeping them (non-reentrant, so it
    works with frozen inputs, PEFT and ZeRO-3). `recomputation()` is entered around each recomputation: an
    adapter uses it to keep statistics and auxiliary losses from being counted twice."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kwargs = {"use_reentrant": False, "context_fn": lambda: (contextlib.nullcontext(), recomputation())}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x; the older name is deprecated
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def compile_blocks(model: nn.Module) -> int:
    """`torch.compile` each repeated block (the classes transformers names in `_no_split_modules`, e.g. the
    decoder layers), in place: parameter names, checkpoints and hooks stay as they are, and one compilation
    serves every layer. Returns how many modules were compiled."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    blocks = [m for m in base.modules() if type(m).__name__ in names]
    if not blocks:
        raise ConfigError("trainer.compile", f"{type(base).__name__} names no repeated block (_no_split_modules)")
    for block in blocks:
        block.compile()
    return len(blocks)


DENSE_MASK_ATTENTION = ("sdpa", "eager")  # attention that takes a (batch, 1, query, key) mask


def attention_inputs(
    model: nn.Module, inputs: dict[str, torch.Tensor], sample_ids: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """`inputs` with the attention mask made here, on the device, for sdpa and eager attention.

    Why: transformers derives the mask itself and, to tell a packed batch from a plain one, reads a value on the
    host (`find_packed_sequence_indices`, `padding_mask.all()`): one sync per forward. Made here, the mask is the
    same (causal, within a packed sample, over real keys) and the forward never waits on the host. Flash
    attention keeps its own path (position ids or a 2-D mask). `sample_ids` (`packed_sample_ids`, made with the
    batch on the host) saves two ops of a packed batch's mask."""
    config = getattr(getattr(model, "module", model), "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in DENSE_MASK_ATTENTION:
        return inputs
    input_ids = inputs["input_ids"]
    length = input_ids.shape[1]
    causal = _causal(length, input_ids.device)
    if "position_ids" in inputs:  # packed: a sample starts at position 0; padding is a sample of its own
        sample = packed_sample_ids(inputs["position_ids"]) if sample_ids is None else sample_ids  # (B, 1, T, 1)
        mask = (sample == sample.transpose(2, 3)) & causal
    else:  # padded: causal over the real keys, and every query sees itself (a padding row is never all masked)
        real = inputs["attention_mask"].bool()
        mask = ((real[:, None, :] & causal) | _causal(length, input_ids.device, diagonal=True))[:, None]
    if implementation == "eager":  # added to the scores
        dtype = getattr(model, "dtype", None) or torch.float32
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
    return {**inputs, "attention_mask": mask}


def packed_sample_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Which packed sample each token belongs to (a sample starts at position 0), numbered along its row; shaped
    (B, 1, T, 1), a query axis of the attention mask."""
    return (position_ids == 0).cumsum(-1)[:, None, :, None]


@functools.cache
def _causal(length: int, device: torch.device, diagonal: bool = False) -> torch.Tensor:
    """(length, length) bool: key <= query (or key == query). Made once per length: masks cost no launch for it."""
    ones = torch.ones(length, length, dtype=torch.bool, device=device)
    return ones.diag().diag_embed() if diagonal else ones.tril()
