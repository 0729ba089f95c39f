"""`mtft-eval checkpoint=RUN/checkpoint-N out=DIR [key=value ...]`: per-task validation loss, perplexity and
generation metrics of a trained checkpoint (training/evaluate.py).

Keys: config=RUN/config.yaml (needed for an exported adapter; a checkpoint finds its run's), data=FILE.yaml (a
data config; default: the run's), batch_size, max_new_tokens, max_samples (per task), do_sample, temperature,
seed, zero3. Writes DIR/eval.json and DIR/predictions.jsonl and prints a table.

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

from mtft.distributed import is_rank_zero
from mtft.errors import ConfigError, UserError

USAGE = (
    "[torchrun --nproc_per_node N -m mtft.cli.eval | mtft-eval] checkpoint=DIR out=DIR [config=FILE] [data=FILE]"
    " [batch_size=N] [max_new_tokens=N] [zero3=true|false] ..."
)


def main(argv: list[str] | None = None) -> None:
    args = dict(arg.split("=", 1) for arg in (sys.argv[1:] if argv is None else argv) if "=" in arg)
    try:
        from mtft.config.convert import from_dict
        from mtft.training.evaluate import EvalSettings

        paths = {"checkpoint", "out", "config", "data"}
        known = paths | {f.name for f in dataclasses.fields(EvalSettings)}
        unknown = sorted(set(args) - known)
        if unknown or "checkpoint" not in args or "out" not in args:
            raise ConfigError("", f"usage: {USAGE} (unknown: {unknown})")
        settings = from_dict(EvalSettings, {k: yaml.safe_load(v) for k, v in args.items() if k not in paths})
        from mtft.training.evaluate import evaluate, print_table  # heavy imports once the arguments are valid

        optional = {k: Path(args[k]) if k in args else None for k in ("config", "data")}
        report = evaluate(Path(args["checkpoint"]), Path(args["out"]), settings, **optional)
        if is_rank_zero():
            print_table(report)
            print(f"written to {args['out']}/eval.json and predictions.jsonl")
    except UserError as err:
        print(f"mtft-eval: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
