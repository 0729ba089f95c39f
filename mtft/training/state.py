"""Checkpoints: the DeepSpeed engine's own (model, optimizer, scheduler; sharded under ZeRO), plus the trained
weights as safetensors, plus what mtft needs for an exact resume: the run's state (step, balancer) with the
engine's, and each rank's own (RNG, data position) in `rank_state_<rank>.pt`.

A checkpoint directory counts only once its COMPLETE marker exists, written last, so a crash mid-save
never leaves a half checkpoint that `resume=auto` would pick.
"""

from __future__ import annotations

import contextlib
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from transformers import PreTrainedTokenizerBase

from mtft.adapters import AdapterConfig, save_adapter
from mtft.adapters.base import write_adapter_config
from mtft.config.errors import ConfigError

COMPLETE_MARKER = "COMPLETE"
ADAPTER_DIR = "adapter"


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / f"checkpoint-{step}"


def save_checkpoint(
    engine,
    output_dir: Path,
    step: int,
    mtft_state: dict[str, Any],
    rank_state: dict[str, Any],
    adapter_cfg: AdapterConfig,
    tokenizer: PreTrainedTokenizerBase,
) -> Path:
    """Collective: every rank must call it. The frozen base is not saved: the run's model config rebuilds it."""
    path = checkpoint_dir(output_dir, step)
    engine.save_checkpoint(
        str(output_dir), tag=path.name, client_state={"mtft": mtft_state}, exclude_frozen_parameters=True
    )
    rank = dist.get_rank()
    torch.save({"rng": _rng_state(), **rank_state}, path / f"rank_state_{rank}.pt")
    _save_adapter(engine, adapter_cfg, tokenizer, path / ADAPTER_DIR)
    dist.barrier()
    if rank == 0:
        (path / COMPLETE_MARKER).write_text(f"{step}\n")
    dist.barrier()
    return path


def _save_adapter(engine, cfg: AdapterConfig, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """Rank 0 writes the trained weights as safetensors, beside the tokenizer.

    Under ZeRO-3 every rank holds only a shard of each weight, so this is collective. An adapter's parameters
    (small) are gathered on every rank for the save. A full fine-tune's are consolidated one layer at a time into
    rank 0's CPU memory (DeepSpeed's own consolidation), so no GPU ever holds the whole model.
    """
    rank = dist.get_rank()
    if engine.zero_optimization_stage() == 3 and cfg.name == "none":
        state = engine._zero3_consolidated_16bit_state_dict()  # None on ranks other than 0
        if rank == 0:
            directory.mkdir(parents=True, exist_ok=True)
            engine.module.save_pretrained(directory, state_dict=state, safe_serialization=True)
            write_adapter_config(cfg, directory)
            tokenizer.save_pretrained(directory)
        return
    gather = contextlib.nullcontext()
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        trainable = [p for p in engine.module.parameters() if p.requires_grad]
        gather = deepspeed.zero.GatheredParameters(trainable, modifier_rank=None)
    with gather:
        if rank == 0:
            save_adapter(engine.module, cfg, directory)
            tokenizer.save_pretrained(directory)


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = []
    for path in output_dir.glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and (path / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def prune_checkpoints(output_dir: Path, keep: int, protect: Path | None) -> None:
    """Delete all but the newest `keep` complete checkpoints, never `protect` (the one this run resumed from)."""
    if keep <= 0 or dist.get_rank() != 0:
        return
    for path in complete_checkpoints(output_dir)[:-keep]:
        if protect is None or path.resolve() != protect.resolve():
            shutil.rmtree(path)


def find_resume_checkpoint(output_dir: Path, resume: str) -> Path | None:
    """`auto`: the newest complete checkpoint in output_dir (None if there is none); otherwise the given path."""
    if resume != "auto":
        path = Path(resume)
        if not (path / COMPLETE_MARKER).is_file():
            raise ConfigError(
                "trainer.resume", f"{resume} is not a complete mtft checkpoint (no {COMPLETE_MARKER} file)"
            )
        return path
    complete = complete_checkpoints(output_dir)
    return complete[-1] if complete else None


def load_checkpoint(engine, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore the engine's state and this rank's RNG; returns (the run's mtft state, this rank's state)."""
    # not strict: checkpoints leave out the frozen base parameters, which the engine's model already holds
    _, client_state = engine.load_checkpoint(str(path.parent), tag=path.name, load_module_strict=False)
    rank_state = torch.load(path / f"rank_state_{dist.get_rank()}.pt", weights_only=False)
    _set_rng_state(rank_state.pop("rng"))
    return client_state["mtft"], rank_state


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
