"""`mtft-export checkpoint=RUN/checkpoint-N out=DIR [merge=true]`: a trained adapter, ready to ship.

merge=false (default) copies the adapter (safetensors, its JSON config, the tokenizer): load it with
`mtft.load_adapter(base_model, DIR)`, or, for LoRA, `peft.PeftModel.from_pretrained`.
merge=true writes a whole Hugging Face model with LoRA folded into the base weights (`adapter=lora` or `none`).
Mixture-of-experts adapters cannot be merged: each token picks its own experts, so no single weight matrix
equals the adapted layer. Export them unmerged.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from mtft.config.errors import ConfigError, UserError

MERGEABLE = ("lora", "none")


def export(checkpoint: Path, out: Path, merge: bool) -> str:
    adapter_dir = checkpoint / "adapter"
    config_file = adapter_dir / "mtft_adapter.json"
    if not config_file.is_file():
        raise ConfigError("checkpoint", f"{checkpoint} holds no adapter/mtft_adapter.json: not an mtft checkpoint")
    name = json.loads(config_file.read_text())["name"]
    if out.exists() and any(out.iterdir()):
        raise ConfigError("out", f"{out} exists and is not empty")
    if not merge:
        shutil.copytree(adapter_dir, out, dirs_exist_ok=True)
        return f"{name} adapter exported to {out}; load it with mtft.load_adapter(base_model, '{out}')"
    if name not in MERGEABLE:
        raise ConfigError(
            "merge", f"a {name} adapter cannot be merged: routing is per token; export it with merge=false"
        )
    import mtft
    from mtft.models import load_model_and_tokenizer

    model_cfg = _run_model_config(checkpoint)
    base, tokenizer = load_model_and_tokenizer(model_cfg)
    model = mtft.load_adapter(base, adapter_dir)
    merged = model.merge_and_unload() if name == "lora" else model
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return f"merged {name} model exported to {out}; load it with AutoModelForCausalLM.from_pretrained('{out}')"


def _run_model_config(checkpoint: Path):
    """The base model the run trained on, from its config.yaml (one level above the checkpoint)."""
    import yaml

    from mtft.config.convert import from_dict
    from mtft.config.schema import ModelConfig

    run_config = checkpoint.parent / "config.yaml"
    if not run_config.is_file():
        raise ConfigError("checkpoint", f"no {run_config}: merge needs the run's config to rebuild the base model")
    return from_dict(ModelConfig, yaml.safe_load(run_config.read_text())["model"], "model")


def main(argv: list[str] | None = None) -> None:
    args = dict(arg.split("=", 1) for arg in (sys.argv[1:] if argv is None else argv) if "=" in arg)
    try:
        unknown = sorted(set(args) - {"checkpoint", "out", "merge"})
        if unknown or "checkpoint" not in args or "out" not in args:
            raise ConfigError("", f"usage: mtft-export checkpoint=DIR out=DIR [merge=true] (unknown: {unknown})")
        merge = args.get("merge", "false").lower() in ("1", "true", "yes")
        print(export(Path(args["checkpoint"]), Path(args["out"]), merge))
    except UserError as err:
        print(f"mtft-export: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
