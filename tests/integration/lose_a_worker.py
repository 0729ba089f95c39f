"""`torchrun ... tests/integration/lose_a_worker.py OVERRIDES` with MTFT_LOSE=step:N, save:N or hang:N: mtft-train,
whose rank 1 kills itself (SIGKILL) in torchrun's first attempt, at the start of optimizer step N, or halfway
through writing checkpoint-N (the engine's and its rank's state written, the adapter not; the COMPLETE marker never
comes), or stops itself (SIGSTOP: alive, not answering) at the start of step N. A lost or hung worker, at a moment
the test chooses; later attempts run untouched."""

from __future__ import annotations

import os
import signal

from mtft.cli.train import main
from mtft.training import step
from mtft.training.checkpoint import files

WHEN, AT = os.environ["MTFT_LOSE"].split(":")
LOSING = os.environ.get("RANK") == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0"
optimizer_step, save_adapter = step.optimizer_step, files._save_adapter
steps_begun = 0


def lose_at_step(*args, **kwargs):
    global steps_begun
    steps_begun += 1
    if steps_begun == int(AT):
        os.kill(os.getpid(), signal.SIGSTOP if WHEN == "hang" else signal.SIGKILL)
    return optimizer_step(*args, **kwargs)


def lose_at_save(engine, cfg, tokenizer, directory):
    if directory.parent.name == f"checkpoint-{AT}":
        os.kill(os.getpid(), signal.SIGKILL)
    return save_adapter(engine, cfg, tokenizer, directory)


if __name__ == "__main__":
    if LOSING and WHEN in ("step", "hang"):
        step.optimizer_step = lose_at_step
    elif LOSING and WHEN == "save":
        files._save_adapter = lose_at_save
    main()
