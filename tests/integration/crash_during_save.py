"""`python tests/integration/crash_during_save.py OVERRIDES` with MTFT_CRASH_AT=N: mtft-train, killed by
SIGKILL halfway through writing checkpoint-N (the engine state and rank state are on disk, the adapter file is
cut in half, the COMPLETE marker never comes). A crash no handler can soften."""

from __future__ import annotations

import os
import signal

from mtft.cli.train import main
from mtft.training.checkpoint import files

CRASH_AT = f"checkpoint-{os.environ['MTFT_CRASH_AT']}"
save_adapter = files.save_adapter


def save_then_die(model, cfg, directory):
    save_adapter(model, cfg, directory)
    if directory.parent.name == CRASH_AT:
        weights = next(directory.glob("*.safetensors"))
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    files.save_adapter = save_then_die
    main()
