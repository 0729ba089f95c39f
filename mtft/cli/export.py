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

import sys
from pathlib import Path

from mtft.cli.key_values import key_values
from mtft.errors import ConfigError, UserError
from mtft.logging.console import quiet_library_warnings, terminal_bars

USAGE = "mtft-export checkpoint=DIR out=DIR [merge=true] [from_shards=true]"


def main(argv: list[str] | None = None) -> None:
    quiet_library_warnings()
    try:
        args = key_values(sys.argv[1:] if argv is None else argv, USAGE)
        unknown = sorted(set(args) - {"checkpoint", "out", "merge", "from_shards"})
        if unknown or "checkpoint" not in args or "out" not in args:
            raise ConfigError("", f"usage: {USAGE} (unknown: {unknown})")
        flags = {key: args.get(key, "false").lower() in ("1", "true", "yes") for key in ("merge", "from_shards")}
        terminal_bars("auto", rank=0)
        from mtft.training.export import export  # heavy imports only once the arguments are known to be valid

        print(export(Path(args["checkpoint"]), Path(args["out"]), **flags))
    except UserError as err:
        print(f"mtft-export: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
