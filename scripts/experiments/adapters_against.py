"""The adapters' train step (mtft-bench adapters' model and configurations) against an earlier commit's, in one
process: a step of each adapter of each tree in turn, round after round, so that a slow spell of the machine falls on
both alike. On a shared CPU separate runs differ by more than the change being measured.

    python scripts/experiments/adapters_against.py 444f7b9 --rounds 30

The earlier tree is read out of git (`git archive`) into a temporary directory as the package `mtft_then`, its
own imports renamed to match, so both trees import side by side. LoRA is PEFT's in both: its ratio shows the
noise of the comparison.
"""

from __future__ import annotations

import argparse
import importlib
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import mtft.bench.adapters as now

FROM_IMPORT, PLAIN_IMPORT = re.compile(r"\bfrom mtft\b"), re.compile(r"^(\s*)import mtft$", re.MULTILINE)


def earlier_tree(revision: str, directory: Path):
    """`mtft.bench.adapters` of `revision`, importable beside this tree's."""
    archive = subprocess.run(["git", "archive", revision, "mtft"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(directory, filter="data")
    (directory / "mtft").rename(directory / "mtft_then")
    for path in (directory / "mtft_then").rglob("*.py"):
        text = FROM_IMPORT.sub("from mtft_then", path.read_text())
        path.write_text(PLAIN_IMPORT.sub(r"\1import mtft_then as mtft", text))
    sys.path.insert(0, str(directory))
    return importlib.import_module("mtft_then.bench.adapters")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revision", help="the earlier commit")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--adapters", default="lora,smora,molora,mor1e")
    args = parser.parse_args()
    names = args.adapters.split(",")
    with tempfile.TemporaryDirectory() as tmp:  # kept to the end: a module may import lazily
        then = earlier_tree(args.revision, Path(tmp))
        trees = (("then", then), ("now", now))
        steps = {(name, tree): module._trainer(name)[2] for name in names for tree, module in trees}
        times: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
        for round_ in range(args.warmup + args.rounds):
            for key, step in steps.items():
                seconds = step()
                if round_ >= args.warmup:
                    times[key].append(seconds)
    print(f"{'adapter':<8}{args.revision + ' ms':>14}{'now ms':>9}{'now/then':>10}{'min now/then':>14}  now faster in")
    for name in names:
        then_s, now_s = times[name, "then"], times[name, "now"]
        median = statistics.median(now_s) / statistics.median(then_s)
        faster = sum(a < b for a, b in zip(now_s, then_s, strict=True))
        print(
            f"{name:<8}{statistics.median(then_s) * 1e3:>14.0f}{statistics.median(now_s) * 1e3:>9.0f}{median:>10.3f}"
            f"{min(now_s) / min(then_s):>14.3f}  {faster}/{args.rounds} rounds"
        )


if __name__ == "__main__":
    main()
