"""`mtft-export checkpoint=RUN/checkpoint-N out=DIR [merge=true] [from_shards=true]`: a trained adapter, ready
to ship.

merge=false (default) copies the adapter (safetensors, its JSON config, the tokenizer): load it with
`mtft.load_adapter(base_model, DIR)`, or, for LoRA, `peft.PeftModel.from_pretrained`.
from_shards=true rebuilds the weights from the DeepSpeed engine's ZeRO-1/2/3 shards instead, with DeepSpeed's
fp32 consolidation (training/engine.py), offline, on the CPU: in full fp32 precision, e.g. from a bf16 run's
optimizer master weights, or where the gathered copy is missing.
merge=true writes a whole Hugging Face model with LoRA folded into the base weights (`adapter=lora` or `none`).
Mixture-of-experts adapters cannot be merged: each token picks its own experts, so no single weight matrix
equals the adapted layer. Export them unmerged.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from mtft.adapters.base import ADAPTER_CONFIG_FILE
from mtft.errors import ConfigError, UserError

USAGE = "mtft-export checkpoint=DIR out=DIR [merge=true] [from_shards=true]"


def export(checkpoint: Path, out: Path, merge: bool, from_shards: bool = False) -> str:
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

    import mtft
    from mtft.adapters import save_adapter
    from mtft.models import load_model_and_tokenizer

    base, tokenizer = load_model_and_tokenizer(_run_model_config(checkpoint))
    model = _from_shards(base, cfg, checkpoint) if from_shards else mtft.load_adapter(base, adapter_dir)
    if not merge:
        save_adapter(model, cfg, out)
        tokenizer.save_pretrained(out)
        return f"{name} adapter consolidated from the ZeRO shards into {out}; load it with mtft.load_adapter"
    merged = model if cfg.is_full_model else model.merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return f"merged {name} model exported to {out}; load it with AutoModelForCausalLM.from_pretrained('{out}')"


def _adapter_config(config_file: Path):
    from mtft.adapters import ADAPTERS

    saved = json.loads(config_file.read_text())
    return ADAPTERS[saved["name"]].config(**saved)


def _from_shards(base, cfg, checkpoint: Path):
    """The adapter method injected into `base`, its trained weights consolidated from the engine's ZeRO shards."""
    from mtft.adapters import ADAPTERS
    from mtft.training.engine import fp32_state_from_shards

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
    import yaml

    from mtft.config.convert import from_dict
    from mtft.models import ModelConfig

    run_config = checkpoint.parent / "config.yaml"
    if not run_config.is_file():
        raise ConfigError("checkpoint", f"no {run_config}: merge needs the run's config to rebuild the base model")
    return from_dict(ModelConfig, yaml.safe_load(run_config.read_text())["model"], "model")


def main(argv: list[str] | None = None) -> None:
    args = dict(arg.split("=", 1) for arg in (sys.argv[1:] if argv is None else argv) if "=" in arg)
    try:
        unknown = sorted(set(args) - {"checkpoint", "out", "merge", "from_shards"})
        if unknown or "checkpoint" not in args or "out" not in args:
            raise ConfigError("", f"usage: {USAGE} (unknown: {unknown})")
        flags = {key: args.get(key, "false").lower() in ("1", "true", "yes") for key in ("merge", "from_shards")}
        print(export(Path(args["checkpoint"]), Path(args["out"]), **flags))
    except UserError as err:
        print(f"mtft-export: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
