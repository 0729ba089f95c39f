"""`mtft-eval checkpoint=RUN/checkpoint-N out=DIR [key=value ...]`: per-task validation loss, perplexity and
generation metrics of a trained checkpoint (training/offline_eval.py).

`mtft-eval model=DIR_OR_ID [gguf_file=NAME] [adapter=DIR] data=FILE.yaml out=DIR`: the same for a model that mtft
did not train: the base model (the zero-shot row), or with a PEFT adapter trained elsewhere (TRL, LLaMA-Factory,
axolotl). precision=auto|bf16|fp32 sets its dtype (auto: bf16 on a GPU that has it).

Keys: config=RUN/config.yaml (needed for an exported adapter; a checkpoint finds its run's), data=FILE.yaml (a
data config; default: the run's), batch_size, max_new_tokens, max_samples (per task), do_sample, temperature,
seed, zero3, collective_timeout (seconds, as training's). Writes DIR/eval.json, DIR/predictions.jsonl and
DIR/sample_losses.jsonl (each validation sample's loss sum and tokens) and prints a table.

Data-parallel under a launcher, with the one-rank numbers: `torchrun --nproc_per_node N -m mtft.cli.eval ...`
splits each task's samples over the ranks; rank 0 gathers, writes and prints. zero3=true partitions the
parameters over the ranks with ZeRO-3 (the default for a run trained under ZeRO-3, with several ranks);
zero3=false keeps a whole copy on each rank.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import yaml

from mtft.cli.key_values import key_values
from mtft.distributed import is_rank_zero
from mtft.errors import ConfigError, UserError
from mtft.logging.console import quiet_library_warnings

USAGE = (
    "[torchrun --nproc_per_node N -m mtft.cli.eval | mtft-eval] (checkpoint=DIR [config=FILE] [data=FILE] |"
    " model=DIR_OR_ID [gguf_file=NAME] [adapter=DIR] [precision=P] data=FILE) out=DIR"
    " [batch_size=N] [max_new_tokens=N] [zero3=true|false] ..."
)
BASE_KEYS = {"model", "gguf_file", "adapter", "precision"}


def main(argv: list[str] | None = None) -> None:
    quiet_library_warnings()  # bars: `evaluate` draws them only on a terminal, as mtft-train does
    try:
        args = key_values(sys.argv[1:] if argv is None else argv, USAGE)
        from mtft.config.convert import from_dict
        from mtft.training.offline_eval import EvalSettings

        paths = {"checkpoint", "out", "config", "data"}
        known = paths | BASE_KEYS | {f.name for f in dataclasses.fields(EvalSettings)}
        unknown = sorted(set(args) - known)
        base_keys = sorted(BASE_KEYS & set(args))
        if unknown or ("checkpoint" in args) == ("model" in args) or "out" not in args:
            raise ConfigError("", f"usage: {USAGE} (unknown: {unknown})")
        if "checkpoint" in args and base_keys:
            raise ConfigError(base_keys[0], "only with model=... (a checkpoint knows its model)")
        if "model" in args and "config" in args:
            raise ConfigError("config", "only with checkpoint=... (a base model has no run config)")
        skip = paths | BASE_KEYS
        settings = from_dict(EvalSettings, {k: yaml.safe_load(v) for k, v in args.items() if k not in skip})
        from mtft.training.offline_eval import evaluate, print_table  # heavy imports once the arguments are valid

        optional = {k: Path(args[k]) if k in args else None for k in ("config", "data")}
        checkpoint = Path(args["checkpoint"]) if "checkpoint" in args else None
        report = evaluate(checkpoint, Path(args["out"]), settings, **optional, base=base_model(args))
        if is_rank_zero():
            print_table(report)
            print(f"written to {args['out']}/eval.json, predictions.jsonl and sample_losses.jsonl")
    except UserError as err:
        print(f"mtft-eval: error: {err}", file=sys.stderr)
        sys.exit(2)


def base_model(args: dict[str, str]):
    """`model=`, `gguf_file=`, `adapter=`, `precision=` as a BaseModel (None without `model=`)."""
    if "model" not in args:
        return None
    from mtft.models import ModelConfig
    from mtft.training.inference import BaseModel

    model = ModelConfig(name_or_path=args["model"], gguf_file=args.get("gguf_file"))
    adapter = Path(args["adapter"]) if "adapter" in args else None
    return BaseModel(model, adapter, args.get("precision", "auto"))


if __name__ == "__main__":
    main()
