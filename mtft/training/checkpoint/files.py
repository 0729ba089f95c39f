"""Checkpoints: the DeepSpeed engine's own (model, optimizer, scheduler; sharded under ZeRO), plus the trained
weights as safetensors, plus what mtft needs for an exact resume: the run's state (step, balancer) with the
engine's, and each rank's own (RNG, data position) in `rank_state_<rank>.pt`.

A checkpoint directory counts only once its COMPLETE marker exists, written last (atomically), so a crash or a
failed write mid-save never leaves a half checkpoint that `resume=auto` would pick. The marker is also the
checkpoint's manifest: each file's size and sha256, so a file truncated or corrupted later is caught before it
is loaded, and `resume=auto` falls back to the previous intact checkpoint. Beside it, `run_inputs.json` keeps
the data config and seed the data position belongs to, so a resume with other data is refused with a diff.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from transformers import PreTrainedTokenizerBase

from mtft.adapters import AdapterConfig, save_adapter
from mtft.adapters.base import write_adapter_config
from mtft.distributed import same_on_all_ranks
from mtft.errors import ConfigError, UserError
from mtft.training.engine import Engine, consolidated_state_dict, gathered, is_sharded

COMPLETE_MARKER = "COMPLETE"
ADAPTER_DIR = "adapter"
RUN_INPUTS = "run_inputs.json"
HASH_CHUNK = 1 << 20  # bytes read at a time: hashing a many-GB optimizer state never holds it in memory
NOT_INPUTS = ("data.num_proc",)  # changes how fast tokenizing runs, not which samples come out


class CheckpointWriteError(UserError):
    """The file system refused a checkpoint (disk full, read-only, quota). The user's environment, not a bug in
    mtft, so the CLI reports it in one paragraph; the previous complete checkpoint is untouched."""


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / f"checkpoint-{step}"


def prepare_output_dir(output_dir: Path) -> None:
    """Create `output_dir` and write a file into it, before any model loads: a run that cannot save learns it in
    seconds, not at its first checkpoint hours later. Only a real write tells (root ignores permission bits)."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".mtft-write-probe-", dir=output_dir)
        with os.fdopen(fd, "wb") as file:
            file.write(b"mtft")
        os.unlink(probe)
    except OSError as err:
        raise ConfigError("trainer.output_dir", f"cannot write to {output_dir}: {err}") from None


@dataclass
class CheckpointContents:
    """What a checkpoint holds beside the engine's own state (weights, optimizer, schedule)."""

    run_state: dict[str, Any]  # equal on every rank: in the engine's client state, under "mtft"
    rank_state: dict[str, Any]  # this rank's own, beside its RNG
    adapter: AdapterConfig  # how to save the trained weights as safetensors
    tokenizer: PreTrainedTokenizerBase  # saved beside them
    run_inputs: dict[str, Any]  # the data config and seed the data stream follows


def save_checkpoint(engine: Engine, output_dir: Path, step: int, contents: CheckpointContents) -> Path:
    """Collective: every rank must call it. The frozen base is not saved: the run's model config rebuilds it.

    A write that fails raises an error naming this checkpoint and the intact one before it. The failing rank
    raises at once; the launcher (torchrun, deepspeed) then stops the other ranks."""
    path = checkpoint_dir(output_dir, step)
    try:
        _write_checkpoint(engine, path, step, contents)
    except Exception as err:
        previous = complete_checkpoints(output_dir)
        kept = f"{previous[-1]} is intact" if previous else "there is no earlier complete checkpoint"
        message = f"writing checkpoint {path} failed: {err}. {kept}; trainer.resume=auto resumes from it"
        if isinstance(err, OSError):
            raise CheckpointWriteError(f"{message} once the cause (e.g. a full disk) is fixed") from err
        raise RuntimeError(message) from err
    return path


def _write_checkpoint(engine: Engine, path: Path, step: int, contents: CheckpointContents) -> None:
    rank = dist.get_rank()
    if rank == 0 and path.exists():  # left by an interrupted save of this step, or a run resumed from earlier
        shutil.rmtree(path)
    dist.barrier()
    engine.save_checkpoint(path.parent, path.name, {"mtft": contents.run_state})
    torch.save({"rng": _rng_state(), **contents.rank_state}, path / f"rank_state_{rank}.pt")
    _save_adapter(engine, contents.adapter, contents.tokenizer, path / ADAPTER_DIR)
    if rank == 0:
        (path / RUN_INPUTS).write_text(json.dumps(contents.run_inputs, indent=2))
    dist.barrier()
    if rank == 0:
        _write_marker(path, step)
    dist.barrier()


def _save_adapter(engine: Engine, cfg: AdapterConfig, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """Rank 0 writes the trained weights as safetensors, beside the tokenizer.

    Under ZeRO-3 every rank holds only a shard of each weight, so this is collective. An adapter's parameters
    (small) are gathered on every rank for the save. A full fine-tune's are consolidated one layer at a time into
    rank 0's CPU memory (DeepSpeed's own consolidation), so no GPU ever holds the whole model.
    """
    rank = dist.get_rank()
    if is_sharded(engine) and cfg.is_full_model:
        state = consolidated_state_dict(engine)  # None on ranks other than 0
        if rank == 0:
            directory.mkdir(parents=True, exist_ok=True)
            engine.module.save_pretrained(directory, state_dict=state, safe_serialization=True)
            write_adapter_config(cfg, directory)
            tokenizer.save_pretrained(directory)
        return
    with gathered(engine, [p for p in engine.module.parameters() if p.requires_grad]):
        if rank == 0:
            save_adapter(engine.module, cfg, directory)
            tokenizer.save_pretrained(directory)


def _write_marker(path: Path, step: int) -> None:
    """The manifest of every file written (rank 0 sees all ranks' files: resume needs a shared file system),
    renamed into place so the marker is whole or absent."""
    files = sorted(f for f in path.rglob("*") if f.is_file())
    manifest = {f.relative_to(path).as_posix(): {"size": f.stat().st_size, "sha256": _sha256(f)} for f in files}
    partial = path / f"{COMPLETE_MARKER}.partial"
    partial.write_text(json.dumps({"step": step, "files": manifest}, indent=1))
    os.replace(partial, path / COMPLETE_MARKER)


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as stream:
        while chunk := stream.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checkpoint(path: Path) -> str | None:
    """None if every file matches the manifest in the COMPLETE marker, else what is wrong, naming the file.

    A marker from before manifests holds just the step: nothing to check, and the checkpoint loads as before.
    """
    marker = path / COMPLETE_MARKER
    text = marker.read_text()
    if not text.lstrip().startswith("{"):
        return None
    try:
        files = json.loads(text)["files"]
    except (ValueError, KeyError):
        return f"{marker} is corrupt (not the manifest mtft writes)"
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            return f"{file} is missing (listed in {marker})"
        if file.stat().st_size != expected["size"]:
            return f"{file} has {file.stat().st_size} bytes, {expected['size']} when saved (truncated?)"
    for name, expected in files.items():
        if _sha256(path / name) != expected["sha256"]:
            return f"{path / name} does not match the sha256 recorded when it was saved (corrupt)"
    return None


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = []
    for path in output_dir.glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and (path / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def prune_checkpoints(output_dir: Path, keep: int, protect: Path | list[Path | None] | None) -> None:
    """Delete all but the newest `keep` complete checkpoints, never those in `protect` (the one this run resumed
    from, the best one)."""
    if keep <= 0 or dist.get_rank() != 0:
        return
    spared = {p.resolve() for p in (protect if isinstance(protect, list) else [protect]) if p is not None}
    for path in complete_checkpoints(output_dir)[:-keep]:
        if path.resolve() not in spared:
            shutil.rmtree(path)


def find_resume_checkpoint(output_dir: Path, resume: str) -> Path | None:
    """`auto`: the newest complete, intact checkpoint in output_dir (None if there is none); otherwise the given
    path. A damaged checkpoint is skipped with a warning that names the file; none left intact is an error.
    Rank 0 reads and hashes the files once; every rank gets its answer."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    path, problem = same_on_all_ranks(_pick_checkpoint(output_dir, resume) if rank == 0 else None)
    if problem:
        raise ConfigError("trainer.resume", problem)
    return None if path is None else Path(path)


def _pick_checkpoint(output_dir: Path, resume: str) -> tuple[str | None, str | None]:
    """(checkpoint, None) or (None, what is wrong)."""
    if resume != "auto":
        path = Path(resume)
        if not (path / COMPLETE_MARKER).is_file():
            return None, f"{resume} is not a complete mtft checkpoint (no {COMPLETE_MARKER} file)"
        problem = verify_checkpoint(path)
        return (None, f"{problem}; cannot resume from {path}") if problem else (str(path), None)
    problems = []
    for path in reversed(complete_checkpoints(output_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return str(path), None
        print(f"mtft: warning: {problem}; skipping {path.name} for an earlier checkpoint", file=sys.stderr, flush=True)
        problems.append(problem)
    if problems:
        return None, (
            f"no intact checkpoint left in {output_dir}: {'; '.join(problems)}. "
            "Restore the files, or start again in a new trainer.output_dir"
        )
    return None, None


def input_changes(path: Path, run_inputs: dict[str, Any]) -> list[str]:
    """How this run's data config and seed differ from those `path` was made with, one entry per key (e.g.
    "data.tasks[1].path changed from 'a.jsonl' to 'b.jsonl'"). Read before any model loads, so a mismatch costs
    seconds. A checkpoint from before run_inputs.json: nothing to compare here (the sampler check still runs)."""
    saved_file = path / RUN_INPUTS
    if not saved_file.is_file():
        return []
    saved, now = _flatten(json.loads(saved_file.read_text())), _flatten(json.loads(json.dumps(run_inputs)))
    changes = []
    for key in dict.fromkeys([*saved, *now]):
        if key in NOT_INPUTS or saved.get(key, KeyError) == now.get(key, KeyError):
            continue
        if key not in now:
            changes.append(f"{key} ({saved[key]!r}) is gone")
        elif key not in saved:
            changes.append(f"{key}={now[key]!r} is new")
        else:
            changes.append(f"{key} changed from {saved[key]!r} to {now[key]!r}")
    return changes


def sample_changes(sampler_state: dict[str, Any], names: list[str], sizes: list[int], seed: int) -> list[str]:
    """Changes the saved data position cannot survive that the config does not show: task files edited in place
    (other sample counts), or a checkpoint without run_inputs.json made with another seed."""
    changes = [f"trainer.seed changed from {sampler_state['seed']} to {seed}"] if sampler_state["seed"] != seed else []
    saved = list(sampler_state["sizes"])
    if saved != sizes:
        changes.append(f"the tasks' training sample counts changed from {saved} to {sizes} ({', '.join(names)})")
    return changes


def refuse_changes(path: Path, changes: list[str], allowed: bool) -> None:
    """Resuming into other data would continue a sample stream that no longer exists: refuse, unless the user
    said so (then the weights, optimizer and step are kept and the data stream and balancer start afresh)."""
    if not changes:
        return
    shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
    if not allowed:
        raise ConfigError(
            "trainer.resume",
            f"{path.name} was made with a different data config or seed: {shown}. Start a new trainer.output_dir, "
            "or set trainer.resume_allow_changes=true to keep its weights, optimizer and step and restart the data "
            "sampler, validation cycle and balancer",
        )
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(
            f"mtft: warning: resuming {path.name} with changes ({shown}); trainer.resume_allow_changes: weights, "
            "optimizer and step kept, data sampler, validation cycle and balancer restarted",
            file=sys.stderr,
            flush=True,
        )


def _flatten(value: Any, key: str = "") -> dict[str, Any]:
    """Nested dicts and lists of dicts to {"data.tasks[1].path": value}."""
    if isinstance(value, dict):
        return {k: v for name, item in value.items() for k, v in _flatten(item, f"{key}.{name}".lstrip(".")).items()}
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return {k: v for i, item in enumerate(value) for k, v in _flatten(item, f"{key}[{i}]").items()}
    return {key: value}


def load_checkpoint(engine: Engine, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore the engine's state and this rank's RNG; returns (the run's mtft state, this rank's state)."""
    client_state = engine.load_checkpoint(path.parent, path.name)
    rank_state = load_rank_state(path / f"rank_state_{dist.get_rank()}.pt")
    _set_rng_state(rank_state.pop("rng"))
    return client_state["mtft"], rank_state


def load_rank_state(file: Path) -> dict[str, Any]:
    """Plain Python values and tensors only (weights_only: unpickling cannot run code). Rank states written
    before NumPy's RNG state was stored as a list hold one NumPy integer array: that type alone is allowed."""
    with torch.serialization.safe_globals([_NUMPY_RECONSTRUCT, np.ndarray, np.dtype, type(np.dtype(np.uint32))]):
        return torch.load(file, weights_only=True)


_NUMPY_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]


def _rng_state() -> dict[str, Any]:
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), position, has_gauss, cached_gaussian],  # no NumPy array: weights_only loads
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
