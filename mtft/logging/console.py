"""What every mtft command prints besides its own lines, alike in a terminal and in a log file.

Why one place: each command (mtft-train, mtft-eval, mtft-generate, mtft-export, mtft-serve) loads models through
the same libraries, and each would otherwise print their warnings and progress bars its own way. Two rules:
- library warnings that are not the user's concern (the libraries' own use of APIs their dependencies deprecated)
  are filtered, so a log holds what the user can act on;
- progress bars are drawn only where a person watches a terminal (`use_bars`, mtft-train's rule): in a file or a
  launcher's pipe a bar is a chain of `\\r` rewrites, so there the libraries' own bars are turned off as well.
"""

from __future__ import annotations

import warnings

from mtft.logging.progress import use_bars


def quiet_library_warnings() -> None:
    """Filter, for the process, the library warnings no user can act on."""
    # PEFT still calls this transformers API; the warning is theirs to fix and only clutters every run's output.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    # DeepSpeed's ZeRO collectives use torch.distributed names torch has deprecated; the same: not the user's concern.
    warnings.filterwarnings("ignore", message=".*torch.distributed.* is deprecated.*", category=FutureWarning)


def terminal_bars(mode: str, rank: int) -> bool:
    """Whether this process draws progress bars (`use_bars`: `mode` auto, bar or lines). Where it does not, the
    libraries' bars are turned off for the process too: datasets' (tokenizing), transformers' (loading weights)
    and the hub's (downloads). Call it before anything loads."""
    shown = use_bars(mode, rank)
    if not shown:
        import datasets
        import huggingface_hub.utils
        import transformers.utils.logging

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        huggingface_hub.utils.disable_progress_bars()
    return shown
