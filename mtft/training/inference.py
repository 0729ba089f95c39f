"""A trained checkpoint, loaded for inference, and free generation from it: what mtft-eval and mtft-generate
share. The base model comes from the run's config.yaml (a checkpoint finds its run's; an exported adapter is
given it), the adapter from the checkpoint, on the GPU in bf16 where there is one. `load_base` loads a model that
mtft did not train: a base model alone (a results table's zero-shot row), or with a PEFT adapter from elsewhere."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from transformers import PreTrainedTokenizerBase

from mtft.adapters import ADAPTERS, load_adapter, runtime_of
from mtft.adapters.base import ADAPTER_CONFIG_FILE, AdapterRuntime
from mtft.config.train import TrainConfig, build_train_config
from mtft.data.config import DataConfig
from mtft.errors import ConfigError
from mtft.eval.generation import Decoding, generate_batch, stop_ids
from mtft.models import ModelConfig, load_model, load_tokenizer
from mtft.training.engine import resolve_precision


@dataclass
class Trained:
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    runtime: AdapterRuntime  # the adapter's handle (also attached to the model: `runtime_of`)
    cfg: TrainConfig | None  # the run's (a base model's: its model and the data it is scored on; None without)
    adapter: str  # the adapter method's name


def load_trained(checkpoint: Path, config: Path | None = None) -> Trained:
    """`checkpoint`: RUN/checkpoint-N, or a directory `mtft-export` wrote (then `config`: the run's config.yaml)."""
    if (checkpoint / "adapter" / ADAPTER_CONFIG_FILE).is_file():
        adapter_dir, default_config = checkpoint / "adapter", checkpoint.parent / "config.yaml"
    elif (checkpoint / ADAPTER_CONFIG_FILE).is_file():
        adapter_dir, default_config = checkpoint, None
    else:
        raise ConfigError("checkpoint", f"{checkpoint}: neither an mtft checkpoint nor an exported adapter")
    config = config or default_config
    if config is None or not config.is_file():
        raise ConfigError("config", f"{config or checkpoint}: no run config.yaml; pass config=RUN/config.yaml")
    cfg = build_train_config(read_yaml(config, "config"))
    tokenizer = load_tokenizer(cfg.model)
    name = json.loads((adapter_dir / ADAPTER_CONFIG_FILE).read_text())["name"]
    model = load_adapter(load_model(cfg.model, tokenizer), adapter_dir)
    return Trained(_for_inference(model, cfg.deepspeed.precision), tokenizer, runtime_of(model), cfg, name)


PEFT_CONFIG_FILE = "adapter_config.json"


@dataclass
class BaseModel:
    """A model that mtft did not train: `model` as it is, or with the PEFT adapter in `adapter` (one trained by TRL,
    LLaMA-Factory, axolotl or PEFT itself: its adapter_config.json and weights); the tokenizer is the base model's."""

    model: ModelConfig
    adapter: Path | None = None
    precision: str = "auto"  # as deepspeed.precision: auto is bf16 on a GPU that has it


def load_base(base: BaseModel, data: DataConfig | None = None) -> Trained:
    """`base` loaded for inference; its config holds `data` (None: no tasks, as for mtft-generate)."""
    if base.adapter is not None and not (base.adapter / PEFT_CONFIG_FILE).is_file():
        raise ConfigError("adapter", f"{base.adapter}: no {PEFT_CONFIG_FILE} in it; not a PEFT adapter directory")
    cfg = None
    if data is not None:  # nothing injected or trained: the full model, as it is
        full = next(method.config for method in ADAPTERS.values() if method.config.is_full_model)
        cfg = TrainConfig(data=data, model=base.model, adapter=full())
        cfg.deepspeed.precision = base.precision
    tokenizer = load_tokenizer(base.model)
    model = load_model(base.model, tokenizer)
    if base.adapter is not None:
        import peft

        model = peft.PeftModel.from_pretrained(model, str(base.adapter))
    name = "peft" if base.adapter is not None else "none"
    return Trained(_for_inference(model, base.precision), tokenizer, AdapterRuntime(), cfg, name)


def _for_inference(model: nn.Module, precision: str) -> nn.Module:
    """On the GPU in bf16 where there is one (as `deepspeed.precision` resolves), in eval mode."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if resolve_precision(precision) == "bf16" else torch.float32
    return model.to(device, dtype).eval()


def read_yaml(path: Path, key: str) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(key, f"cannot read {path}: {err}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(key, f"{path}: expected a mapping")
    return loaded


def generate(trained: Trained, prompts: list[str | list[dict[str, str]]], decoding: Decoding) -> list[str]:
    """Each prompt's answer. A prompt is a user message (a string) or a whole conversation (chat messages, the
    last one the user's); the chat template is applied and the assistant's turn opened, as in training."""
    tokenizer = trained.tokenizer
    conversations = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
    ids = [chat_prompt_ids(tokenizer, c) for c in conversations]
    stop = sorted(stop_ids(trained.model, tokenizer))
    answers = []
    for start in range(0, len(ids), decoding.batch_size):
        outputs = generate_batch(trained.model, tokenizer, ids[start : start + decoding.batch_size], stop, decoding)
        answers += [tokenizer.decode(o, skip_special_tokens=True) for o in outputs]
    return answers


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, conversation: list[dict[str, str]]) -> list[int]:
    """The conversation through the tokenizer's chat template with the assistant's turn opened, as training built
    its prompts: the token ids the answer continues."""
    ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"]) if isinstance(ids, dict) or hasattr(ids, "keys") else list(ids)
