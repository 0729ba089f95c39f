"""`mtft-generate checkpoint=DIR prompt="..."` or `prompts=FILE.jsonl`: answers from a trained checkpoint or an
exported adapter (training/inference.py), the chat template applied, batched, greedy unless do_sample=true.

FILE.jsonl: one `{"prompt": "..."}` or `{"messages": [...]}` (a conversation ending with the user's turn) a line.
Keys: config=RUN/config.yaml (for an exported adapter), out=FILE.jsonl (prompt and output per line),
max_new_tokens, batch_size, do_sample, temperature, seed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from mtft.errors import ConfigError, DataError, UserError

USAGE = 'mtft-generate checkpoint=DIR (prompt="..." | prompts=FILE.jsonl) [config=FILE] [out=FILE] [max_new_tokens=N]'
SETTINGS = {"max_new_tokens": int, "batch_size": int, "do_sample": bool, "temperature": float, "seed": int}


def read_prompts(path: Path) -> list:
    """Prompts from a JSONL file; a bad line is an error naming the file and the line."""
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            prompt = record["prompt"] if "prompt" in record else record["messages"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(str(path), number, "prompt", 'expected {"prompt": ...} or {"messages": [...]}') from None
        prompts.append(prompt)
    return prompts


def main(argv: list[str] | None = None) -> None:
    args = dict(arg.split("=", 1) for arg in (sys.argv[1:] if argv is None else argv) if "=" in arg)
    try:
        unknown = sorted(set(args) - {"checkpoint", "prompt", "prompts", "config", "out", *SETTINGS})
        if unknown or "checkpoint" not in args or ("prompt" in args) == ("prompts" in args):
            raise ConfigError("", f"usage: {USAGE} (unknown: {unknown})")
        settings = {}
        for key, kind in SETTINGS.items():
            if key in args:
                value = yaml.safe_load(args[key])
                if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
                    raise ConfigError(key, f"expected {kind.__name__}, got {args[key]!r}")
                settings[key] = value
        prompts = [args["prompt"]] if "prompt" in args else read_prompts(Path(args["prompts"]))
        import torch

        from mtft.training.inference import generate, load_trained  # heavy imports once the arguments are valid

        torch.manual_seed(settings.pop("seed", 0))
        trained = load_trained(Path(args["checkpoint"]), Path(args["config"]) if "config" in args else None)
        answers = generate(trained, prompts, **settings)
        rows = [{"prompt": p, "output": a} for p, a in zip(prompts, answers, strict=True)]
        if "out" in args:
            Path(args["out"]).write_text("".join(json.dumps(r) + "\n" for r in rows))
        for row in rows:
            print(row["output"] if len(rows) == 1 else json.dumps(row))
    except UserError as err:
        print(f"mtft-generate: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
