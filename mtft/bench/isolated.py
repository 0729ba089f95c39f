"""Measuring memory in a fresh process, where a case's peak is its own: `python -m MODULE CASE [--quick]` prints
one JSON line, which `in_fresh_process` returns.

The peak is the process's own (VmHWM, the high-water mark of its memory map since `exec`). `ru_maxrss` is not:
Linux carries it over fork and exec from the parent, so a case started from a large process (`mtft-bench all`,
a pytest session) would report the parent's size.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def in_fresh_process(module: str, case: str, quick: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", module, case, *(["--quick"] if quick else [])]
    proc = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def status_kib(key: str) -> int:
    """A /proc/self/status figure in KiB: VmRSS (resident now), VmHWM (the peak since exec or the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_peak() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM, so the next peak is the measured work's, not the imports'."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_resident_bytes() -> int:
    return status_kib("VmHWM") * 1024


def resident_bytes() -> int:
    return status_kib("VmRSS") * 1024
