"""Exporting a trained checkpoint: copy its adapter, rebuild it from the ZeRO shards, or merge it into the base.
`mtft-export` (cli/export.py) is the command line over `export`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from mtft.adapters import ADAPTERS, load_adapter, save_adapter
from mtft.adapters.base import ADAPTER_CONFIG_FILE
from mtft.config.convert import from_dict
from mtft.errors import ConfigError
from mtft.models import ModelConfig, load_model_and_tokenizer
from mtft.training.engine import fp32_state_from_shards


def export(checkpoint: Path, out: Path, merge: bool, from_shards: bool = False) -> str:
    """Write `checkpoint`'s trained weights to `out` (see cli/export.py for the three ways); returns what it did."""
    adapter_dir = checkpoint / "adapter"
    config_file = adapter_dir / ADAPTER_CONFIG_FILE
    if not config_file.is_file():
        raise ConfigError("checkpoint", f"{checkpoint} holds no adapter/{ADAPTER_CONFIG_FILE}: not an mtft checkpoint")
    cfg = _adapter_config(config_file)
    name = cfg.name
    if out.exists() and any(out.iterdir()):
        raise ConfigError("out", f"{out} exists and is not empty")
    if merge and not cfg.can_merge:
        raise ConfigError(
            "merge", f"a {name} adapter cannot be merged: routing is per token; export it with merge=false"
        )
    if not from_shards and not any(adapter_dir.glob("*.safetensors")):
        raise ConfigError("checkpoint", f"{adapter_dir} holds no weights; from_shards=true rebuilds them from shards")
    if not merge and not from_shards:
        shutil.copytree(adapter_dir, out, dirs_exist_ok=True)
        return f"{name} adapter exported to {out}; load it with mtft.load_adapter(base_model, '{out}')"

    base, tokenizer = load_model_and_tokenizer(_run_model_config(checkpoint))
    model = _from_shards(base, cfg, checkpoint) if from_shards else load_adapter(base, adapter_dir)
    if not merge:
        save_adapter(model, cfg, out)
        tokenizer.save_pretrained(out)
        return f"{name} adapter consolidated from the ZeRO shards into {out}; load it with mtft.load_adapter"
    merged = model if cfg.is_full_model else model.merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return f"merged {name} model exported to {out}; load it with AutoModelForCausalLM.from_pretrained('{out}')"


def _adapter_config(config_file: Path):
    saved = json.loads(config_file.read_text())
    return ADAPTERS[saved["name"]].config(**saved)


def _from_shards(base, cfg, checkpoint: Path):
    """The adapter method injected into `base`, its trained weights consolidated from the engine's ZeRO shards."""
    model = ADAPTERS[cfg.name].inject(base, cfg)
    try:
        state = fp32_state_from_shards(checkpoint)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError("from_shards", f"{checkpoint} holds no ZeRO shards to consolidate: {err}") from None
    missing = {n for n, p in model.named_parameters() if p.requires_grad} - set(state)
    if missing:
        raise ConfigError("checkpoint", f"the ZeRO shards in {checkpoint} lack {sorted(missing)[:3]}: another model?")
    model.load_state_dict(state, strict=False)
    return model


def _run_model_config(checkpoint: Path):
    """The base model the run trained on, from its config.yaml (one level above the checkpoint)."""
    run_config = checkpoint.parent / "config.yaml"
    if not run_config.is_file():
        raise ConfigError("checkpoint", f"no {run_config}: merge needs the run's config to rebuild the base model")
    return from_dict(ModelConfig, yaml.safe_load(run_config.read_text())["model"], "model")
