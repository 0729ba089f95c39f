"""Preemption: SIGTERM or SIGUSR1 (Slurm's warning signal) finish the current step, save, and exit 0.
A second signal exits at once."""

from __future__ import annotations

import contextlib
import os
import signal

import torch

from mtft.distributed import all_reduce_sum

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preemption:
    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous = {}
        for sig in SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: no handler can be installed there
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if self.signal is not None:
            os._exit(128 + signum)
        self.signal = signum
        print(f"mtft: got {signal.Signals(signum).name}; finishing this step, then saving", flush=True)

    def requested(self) -> bool:
        """True on every rank if any rank was signalled (one tiny all-reduce per step with several ranks)."""
        return bool(all_reduce_sum(torch.tensor([float(self.signal is not None)])).item() > 0)

    def restore(self) -> None:
        """Put back the handlers that were there before; once (a second call does nothing)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
