"""`mtft-generate checkpoint=DIR prompt="..."` or `prompts=FILE.jsonl`: answers from a trained checkpoint or an
exported adapter (training/inference.py), the chat template applied, batched, greedy unless do_sample=true.
`model=DIR_OR_ID [gguf_file=NAME] [adapter=DIR] [precision=P]` instead of `checkpoint=`: a model that mtft did not
train, alone or with a PEFT adapter trained elsewhere.

FILE.jsonl: one `{"prompt": "..."}` or `{"messages": [...]}` (a conversation ending with the user's turn) a line.
Keys: config=RUN/config.yaml (for an exported adapter), out=FILE.jsonl (prompt and output per line),
max_new_tokens, batch_size, do_sample, temperature, seed.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from mtft.cli.key_values import key_values
from mtft.errors import ConfigError, DataError, UserError
from mtft.logging.console import quiet_library_warnings, terminal_bars

USAGE = (
    'mtft-generate (checkpoint=DIR [config=FILE] | model=DIR_OR_ID [gguf_file=NAME] [adapter=DIR]) (prompt="..." |'
    " prompts=FILE.jsonl) [out=FILE] [max_new_tokens=N]"
)


@dataclass
class GenerateSettings:
    """The keys besides the paths, type-checked by the config converter as mtft-eval's are."""

    max_new_tokens: int = 256
    batch_size: int = 8
    do_sample: bool = False
    temperature: float = 1.0
    seed: int = 0


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
    quiet_library_warnings()
    try:
        args = key_values(sys.argv[1:] if argv is None else argv, USAGE)
        from mtft.cli.eval import BASE_KEYS, base_model
        from mtft.config.convert import from_dict

        paths = {"checkpoint", "prompt", "prompts", "config", "out"}
        unknown = sorted(set(args) - paths - BASE_KEYS - {f.name for f in dataclasses.fields(GenerateSettings)})
        one_source = ("checkpoint" in args) != ("model" in args)
        if unknown or not one_source or ("prompt" in args) == ("prompts" in args):
            raise ConfigError("", f"usage: {USAGE} (unknown: {unknown})")
        skip = paths | BASE_KEYS
        settings = from_dict(GenerateSettings, {k: yaml.safe_load(v) for k, v in args.items() if k not in skip})
        prompts = [args["prompt"]] if "prompt" in args else read_prompts(Path(args["prompts"]))
        terminal_bars("auto", rank=0)
        import torch

        from mtft.eval.generation import Decoding  # heavy imports once the arguments are valid
        from mtft.training.inference import generate, load_base, load_trained

        torch.manual_seed(settings.seed)
        base = base_model(args)
        config = Path(args["config"]) if "config" in args else None
        trained = load_base(base) if base is not None else load_trained(Path(args["checkpoint"]), config)
        decoding = Decoding(settings.max_new_tokens, settings.batch_size, settings.do_sample, settings.temperature)
        answers = generate(trained, prompts, decoding)
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
