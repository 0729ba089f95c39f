"""Does TRL train on the same tokens as mtft? Compares, for the first record of each task, the token ids and the
loss mask that TRL's SFTTrainer prepares (trl_sft.py's settings) with mtft's (mtft/data/tokenize.py).

Two halves, one per environment (TRL is not installed in mtft's, and trl_sft.py must not import mtft):
    .venv-trl/bin/python check_template.py trl --model-dir DIR --gguf-file F --data FILE.yaml --out SAMPLES.json
    .venv/bin/python check_template.py mtft SAMPLES.json
The second prints, per sample, whether ids and labels agree, and decodes the first place where they do not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

IGNORE = -100


def trl_side(args: argparse.Namespace) -> None:
    """The rows of SFTTrainer's own prepared train_dataset: what its collator pads into batches."""
    sys.path.insert(0, str(Path(__file__).parent))
    from datasets import Dataset
    from trl import SFTTrainer
    from trl_sft import load_model, parse_args, read_tasks, sft_config

    tasks, yaml_max_len = read_tasks(Path(args.data))
    rows = [records[0] for records in tasks.values()]
    train_args = parse_args(
        ["--model-dir", args.model_dir, "--data", args.data, "--out", str(Path(args.out).parent / "check"),
         "--steps", "1", *(["--gguf-file", args.gguf_file] if args.gguf_file else [])]
    )  # fmt: skip
    tokenizer, model = load_model(train_args)
    config = sft_config(train_args, yaml_max_len or 1024)
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    prepared = trainer.train_dataset
    samples = [
        {"messages": row["prompt"] + row["completion"], "input_ids": prep["input_ids"], "labels": prep["labels"]}
        for row, prep in zip(rows, prepared, strict=True)
    ]
    Path(args.out).write_text(json.dumps(samples, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"check_template: wrote {len(samples)} TRL samples to {args.out}")


def mtft_side(args: argparse.Namespace) -> None:
    from mtft.data.tokenize import tokenize_messages
    from mtft.models import ModelConfig, load_tokenizer

    samples = json.loads(Path(args.samples).read_text(encoding="utf-8"))
    tokenizer = load_tokenizer(ModelConfig(name_or_path=args.model_dir, gguf_file=args.gguf_file))
    same = True
    for i, sample in enumerate(samples):
        ids, labels = tokenize_messages(tokenizer, sample["messages"])
        ids_match, labels_match = ids == sample["input_ids"], labels == sample["labels"]
        same &= ids_match and labels_match
        print(f"sample {i}: {len(ids)} mtft tokens, {len(sample['input_ids'])} TRL tokens; "
              f"ids {'same' if ids_match else 'DIFFER'}, labels {'same' if labels_match else 'DIFFER'}")  # fmt: skip
        print(f"  trained on (mtft): {decode_trained(tokenizer, ids, labels)!r}")
        if not labels_match:
            print(f"  trained on (TRL):  {decode_trained(tokenizer, sample['input_ids'], sample['labels'])!r}")
        if not ids_match:
            at = first_difference(ids, sample["input_ids"])
            print(f"  first difference at token {at}: mtft {tokenizer.decode(ids[at:])!r}, "
                  f"TRL {tokenizer.decode(sample['input_ids'][at:])!r}")  # fmt: skip
    print("check_template: TRL and mtft " + ("agree" if same else "DIFFER"))
    sys.exit(0 if same else 1)


def first_difference(ids: list[int], other: list[int]) -> int:
    return next((k for k, (a, b) in enumerate(zip(ids, other, strict=False)) if a != b), min(len(ids), len(other)))


def decode_trained(tokenizer, ids: list[int], labels: list[int]) -> str:
    return tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != IGNORE])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sides = parser.add_subparsers(dest="side", required=True)
    trl = sides.add_parser("trl", help="dump TRL's prepared samples (run with .venv-trl)")
    trl.add_argument("--data", required=True)
    trl.add_argument("--out", required=True)
    mtft = sides.add_parser("mtft", help="compare them with mtft's tokenization (run with mtft's .venv)")
    mtft.add_argument("samples")
    for side in (trl, mtft):
        side.add_argument("--model-dir", required=True)
        side.add_argument("--gguf-file", default=None)
    args = parser.parse_args()
    trl_side(args) if args.side == "trl" else mtft_side(args)


if __name__ == "__main__":
    main()
