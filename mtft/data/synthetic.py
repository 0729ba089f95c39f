"""The bundled demo suite: four chat tasks that differ clearly in difficulty and size.

Generated deterministically (one seeded RNG per task) and shipped as JSONL in the `messages` format under
mtft/data/demo/. Regenerate both suites with `python -m mtft.data.synthetic [OUT_DIR]`; a test checks the files match.

- sentiment: classify a one-sentence review (easy, small: one adjective decides the label)
- sort: sort 4-7 digits (medium)
- reverse: reverse a 3-8 letter string (medium)
- add: add two 2-4 digit numbers (hard, largest: needs carries)

A second suite, under demo/conflict/, has tasks that conflict: the same digit lists (one seed for all of them),
each task wanting a different answer, told apart only by the instruction. A shared adapter must keep them apart.

- ascending, descending, backwards: sort a list of 4-7 digits up or down, or reverse it
"""

from __future__ import annotations

import json
import random
import string
import sys
from collections.abc import Callable
from pathlib import Path

POSITIVE = ["great", "wonderful", "delicious", "friendly", "excellent", "lovely", "superb", "pleasant"]
NEGATIVE = ["awful", "terrible", "bland", "rude", "horrible", "dreadful", "poor", "disappointing"]
# The shipped files: the demo data config and the benchmarks point here, wherever mtft is installed.
DEMO_DATA_DIR = Path(__file__).resolve().parent / "demo"

NOUNS = ["food", "service", "room", "staff", "movie", "book", "coffee", "music", "view", "price"]


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = (rng.randint(10, 10 ** rng.randint(2, 4) - 1) for _ in range(2))
    return f"What is {a} + {b}?", str(a + b)


def _reverse(rng: random.Random) -> tuple[str, str]:
    word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 8)))
    return f"Reverse: {word}", word[::-1]


def _sort(rng: random.Random) -> tuple[str, str]:
    digits = [rng.randint(0, 9) for _ in range(rng.randint(4, 7))]
    return "Sort: " + " ".join(map(str, digits)), " ".join(map(str, sorted(digits)))


def _sentiment(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(["positive", "negative"])
    adjective = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
    return f"Review: the {rng.choice(NOUNS)} was {adjective}. Sentiment?", label


# name -> (generator, number of samples, seed)
TASKS: dict[str, tuple[Callable[[random.Random], tuple[str, str]], int, int]] = {
    "add": (_add, 2400, 1),
    "reverse": (_reverse, 1600, 2),
    "sort": (_sort, 1200, 3),
    "sentiment": (_sentiment, 400, 4),
}


def _digits(rng: random.Random) -> list[int]:
    return [rng.randint(0, 9) for _ in range(rng.randint(4, 7))]


def _ascending(rng: random.Random) -> tuple[str, str]:
    digits = _digits(rng)
    return "Sort ascending: " + " ".join(map(str, digits)), " ".join(map(str, sorted(digits)))


def _descending(rng: random.Random) -> tuple[str, str]:
    digits = _digits(rng)
    return "Sort descending: " + " ".join(map(str, digits)), " ".join(map(str, sorted(digits, reverse=True)))


def _backwards(rng: random.Random) -> tuple[str, str]:
    digits = _digits(rng)
    return "Write backwards: " + " ".join(map(str, digits)), " ".join(map(str, digits[::-1]))


# the same seed for every task, so every task sees the same digit lists
CONFLICT_TASKS: dict[str, tuple[Callable[[random.Random], tuple[str, str]], int, int]] = {
    "ascending": (_ascending, 1000, 5),
    "descending": (_descending, 1000, 5),
    "backwards": (_backwards, 1000, 5),
}
CONFLICT_DIR = DEMO_DATA_DIR / "conflict"


def generate(name: str) -> list[dict]:
    make, count, seed = TASKS[name] if name in TASKS else CONFLICT_TASKS[name]
    rng = random.Random(seed)
    samples = []
    for _ in range(count):
        prompt, answer = make(rng)
        samples.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]})
    return samples


def write_suite(out_dir: str | Path, tasks: dict = TASKS) -> list[Path]:
    """Write `tasks` (the demo suite, or CONFLICT_TASKS) to OUT_DIR/<name>.jsonl."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in tasks:
        path = out_dir / f"{name}.jsonl"
        path.write_text("".join(json.dumps(s) + "\n" for s in generate(name)))
        paths.append(path)
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEMO_DATA_DIR
    for written in write_suite(target) + write_suite(target / "conflict", CONFLICT_TASKS):
        print(written)
