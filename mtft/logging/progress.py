"""What a person watching the run sees, on rank 0 only: a tqdm bar (step, ETA, loss, the slowest task) on a
terminal; one plain line per logging step where output goes to a file or a launcher's pipe."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm


def use_bars(mode: str, rank: int) -> bool:
    return rank == 0 and (mode == "bar" or (mode == "auto" and sys.stdout.isatty()))


class Progress:
    def __init__(self, mode: str, rank: int, max_steps: int, start: int):
        self.rank, self.max_steps = rank, max_steps
        self.bar = (
            tqdm(total=max_steps, initial=start, desc="train", dynamic_ncols=True) if use_bars(mode, rank) else None
        )
        self.first: dict[str, float] = {}  # each task's first logged training loss
        self.latest: dict[str, float] = {}

    def step(self, loss: float, task_losses: dict[str, float]) -> None:
        for name, value in task_losses.items():
            self.first.setdefault(name, value)
            self.latest[name] = value
        if self.bar is not None:
            self.bar.update(1)
            slowest = self.slowest()
            self.bar.set_postfix(loss=f"{loss:.4f}", **({"slowest": slowest} if slowest else {}), refresh=False)

    def skipped(self, step: int, cause: str, tasks: list[str], in_a_row: int, total: int) -> None:
        """A step whose update was skipped: said at once, with a bar or without, never only in a file."""
        if self.rank != 0:
            return
        line = f"step {step}/{self.max_steps}  SKIPPED ({in_a_row} in a row, {total} in all): {cause}"
        line += f"; tasks in the batch: {', '.join(tasks)}"
        if self.bar is None:
            print(line, flush=True)
        else:
            self.bar.update(1)
            self.bar.write(line)

    def slowest(self) -> str | None:
        """The task whose training loss has fallen least, relative to where it started."""
        ratios = {n: self.latest[n] / self.first[n] for n in self.latest if self.first[n] > 0}
        return max(ratios, key=ratios.get) if len(ratios) > 1 else None

    def logged(self, record: dict[str, Any]) -> None:
        """Plain lines: every logging step. With a bar: only evaluations, written above it."""
        if self.rank != 0:
            return
        evaluated = any(key.endswith("/val_loss") for key in record)
        if self.bar is None:
            print(self.line(record), flush=True)
        elif evaluated:
            self.bar.write(self.line(record))

    def evaluating(self, batches: Iterable, total: int) -> Iterator:
        if self.bar is None:
            return iter(batches)
        return iter(tqdm(batches, total=total, desc="eval", leave=False, dynamic_ncols=True))

    def line(self, record: dict[str, Any]) -> str:
        line = f"step {record['step']}/{self.max_steps}  loss {record['loss']:.4f}  lr {record['lr']:.2e}"
        line += f"  {record['tokens_per_second']:,.0f} tok/s"
        if "throughput/mfu" in record:
            line += f"  MFU {record['throughput/mfu']:.1%}"
        vals = {k.split("/")[1]: v for k, v in record.items() if k.endswith("/val_loss")}
        if vals:
            line += "  val " + " ".join(f"{n}={v:.3f}" for n, v in vals.items())
        slowest = self.slowest()
        return line + (f"  slowest {slowest}" if slowest else "")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
