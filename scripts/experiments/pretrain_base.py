"""Pretrain a small base model on a generic synthetic instruction corpus, so that the quality experiments
fine-tune a model that has learnt something (letters, digits, the chat format, copying, counting, comparing,
simple arithmetic), as users fine-tune a pretrained model rather than a random one.

None of the corpus's skills is one of the experiments' tasks (add, reverse, sort, sentiment; ascending,
descending, backwards). The base is trained with mtft itself (`adapter=full`, full fine-tuning) and exported
whole with `mtft-export merge=true`, so it loads like any Hugging Face checkpoint: `model.name_or_path=DIR`.

The result is cached in OUT/<name> (default runs/base/tiny-128x2) and not committed: a second call only prints
its path. About 5 minutes on 2 CPU cores. Usage: python scripts/experiments/pretrain_base.py [--out runs/base]
"""

from __future__ import annotations

import argparse
import json
import random
import string
import subprocess
import sys
from pathlib import Path

# The base's architecture (TinyModelConfig's fields): wider and deeper than the demo's 64x2, still CPU-sized.
ARCHITECTURE = {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 512}
NAME = "tiny-128x2"
SAMPLES = 30_000
STEPS = 2000
SEED = 7


def _word(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 8)))


def _digits(rng: random.Random) -> list[int]:
    return [rng.randint(0, 9) for _ in range(rng.randint(3, 8))]


def _number(rng: random.Random) -> int:
    return rng.randint(0, 10 ** rng.randint(1, 4) - 1)


def _spaced(values) -> str:
    return " ".join(map(str, values))


SKILLS = [
    lambda r: (f"Copy: {(w := _word(r))}", w),
    lambda r: (f"Copy: {_spaced(d := _digits(r))}", _spaced(d)),
    lambda r: (f"Uppercase: {(w := _word(r))}", w.upper()),
    lambda r: (f"Spell out: {(w := _word(r))}", " ".join(w)),
    lambda r: (f"How many letters in {(w := _word(r))}?", str(len(w))),
    lambda r: (f"First letter of {(w := _word(r))}?", w[0]),
    lambda r: (f"Last letter of {(w := _word(r))}?", w[-1]),
    lambda r: (f"What comes after {(n := _number(r))}?", str(n + 1)),
    lambda r: (f"What comes before {(n := _number(r) + 1)}?", str(n - 1)),
    lambda r: (f"Double {(n := _number(r))}.", str(2 * n)),
    lambda r: (f"Which is larger, {(a := _number(r))} or {(b := _number(r))}?", str(max(a, b))),
    lambda r: (f"Smallest of {_spaced(d := _digits(r))}?", str(min(d))),
    lambda r: (f"Largest of {_spaced(d := _digits(r))}?", str(max(d))),
    lambda r: (f"How many {(k := r.randint(0, 9))}s in {_spaced(d := _digits(r))}?", str(d.count(k))),
]


def write_corpus(path: Path) -> None:
    rng = random.Random(SEED)
    with path.open("w") as f:
        for _ in range(SAMPLES):
            prompt, answer = rng.choice(SKILLS)(rng)
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            f.write(json.dumps({"messages": messages}) + "\n")


def pretrain(out: Path) -> Path:
    """The cached base's directory, trained and exported first if it is not there yet."""
    base = out / NAME
    if (base / "config.json").is_file():
        return base
    work = out / f"{NAME}-run"
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "generic.jsonl"
    write_corpus(corpus)
    overrides = [
        "adapter=full",
        f"data.tasks=[{{name: generic, path: '{corpus.resolve()}'}}]",
        *(f"model.tiny.{key}={value}" for key, value in ARCHITECTURE.items()),
        f"trainer.max_steps={STEPS}",
        "trainer.micro_batch_size=32",
        "trainer.lr=1e-3",
        "trainer.warmup_steps=100",
        "trainer.eval_steps=500",
        "trainer.eval_generations=4",
        f"trainer.output_dir={work / 'train'}",
    ]
    subprocess.run([sys.executable, "-m", "mtft.cli.train", *overrides], check=True)
    checkpoint = work / "train" / f"checkpoint-{STEPS}"
    export = [sys.executable, "-m", "mtft.cli.export", f"checkpoint={checkpoint}", f"out={base}", "merge=true"]
    subprocess.run(export, check=True)
    return base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/base"))
    print(pretrain(parser.parse_args().out))


if __name__ == "__main__":
    main()
