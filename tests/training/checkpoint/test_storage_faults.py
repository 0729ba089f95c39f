"""Storage faults: a checkpoint write that fails partway, a damaged checkpoint on disk, an unwritable output
directory. Each must end in a clear message naming the file or key, and never cost the last good checkpoint.
(A SIGKILL mid-save is tests/integration/test_crash_resume.py's.)"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtft.errors import ConfigError
from mtft.training import components
from mtft.training.checkpoint import checkpointer, files
from mtft.training.checkpoint.files import (
    COMPLETE_MARKER,
    CheckpointWriteError,
    find_resume_checkpoint,
    verify_checkpoint,
)
from mtft.training.loop import train
from tests.helpers import LAUNCH_VARS, compose_config, computed, small_data_overrides

WEIGHTS = "adapter/adapter_model.safetensors"
ENGINE_STATE = "mp_rank_00_model_states.pt"  # DeepSpeed's model (and, at ZeRO-0, optimizer) state


def _config(out, small_tasks, *extra):
    return compose_config(
        [
            *small_data_overrides(small_tasks),
            f"trainer.output_dir={out}",
            "trainer.micro_batch_size=4",
            "trainer.logging_steps=1",
            "trainer.eval_steps=4",
            "trainer.max_steps=4",
            "trainer.save_steps=2",
            *extra,
        ]
    )


def _records(out) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def _spy_resumes(monkeypatch) -> list:
    """The checkpoints train() actually loads."""
    loaded, load = [], checkpointer.load_checkpoint
    monkeypatch.setattr(
        checkpointer, "load_checkpoint", lambda engine, path: loaded.append(path.name) or load(engine, path)
    )
    return loaded


@pytest.fixture(scope="module")
def trained(dist_group, small_tasks, tmp_path_factory):
    """One 4-step run with complete checkpoints 2 and 4; tests damage copies of it."""
    out = tmp_path_factory.mktemp("trained")
    train(_config(out, small_tasks))
    return out


def _copy(trained, tmp_path):
    return shutil.copytree(trained, tmp_path / "run")


def _fail_adapter_write(monkeypatch):
    """The adapter's weights are half written when an exception comes."""
    real = files.save_adapter

    def half_then_raise(model, cfg, directory):
        real(model, cfg, directory)
        if directory.parent.name == "checkpoint-4":
            weights = directory / "adapter_model.safetensors"
            weights.write_bytes(weights.read_bytes()[:100])
            raise RuntimeError("simulated failure while writing the adapter")

    monkeypatch.setattr(files, "save_adapter", half_then_raise)
    return RuntimeError


def _fill_disk(monkeypatch):
    """Every torch.save into checkpoint-4 (DeepSpeed's engine state comes first) hits a full disk after 64 bytes."""
    real = torch.save

    def full_disk(obj, file, *args, **kwargs):
        if "checkpoint-4" not in str(file):
            return real(obj, file, *args, **kwargs)
        with open(file, "wb") as stream:
            stream.write(b"\0" * 64)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))

    monkeypatch.setattr(torch, "save", full_disk)
    return CheckpointWriteError


@pytest.mark.parametrize("fault", [_fail_adapter_write, _fill_disk], ids=["exception_in_adapter_save", "disk_full"])
def test_failed_save_keeps_the_previous_checkpoint_and_auto_resumes_from_it(
    dist_group, small_tasks, tmp_path, monkeypatch, fault
):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        error = fault(patch)
        with pytest.raises(error) as raised:
            train(_config(out, small_tasks))
    message = str(raised.value)
    assert str(out / "checkpoint-4") in message and f"{out / 'checkpoint-2'} is intact" in message
    if error is CheckpointWriteError:
        assert "No space left on device" in message
    assert (out / "checkpoint-4").is_dir() and not (out / "checkpoint-4" / COMPLETE_MARKER).exists()
    assert verify_checkpoint(out / "checkpoint-2") is None  # every file as it was when saved

    loaded = _spy_resumes(monkeypatch)
    train(_config(out, small_tasks, "trainer.resume=auto"))
    assert loaded == ["checkpoint-2"]
    assert verify_checkpoint(out / "checkpoint-4") is None and sorted(_records(out)) == [1, 2, 3, 4]


@pytest.mark.integration
def test_disk_full_exits_with_one_paragraph_naming_the_checkpoint(small_tasks, tmp_path):
    """Through the CLI: exit status 2 and a one-paragraph message, not a traceback."""
    fill_disk = (
        "import errno, os, torch\n"
        "def full(obj, file, *a, **k): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))\n"
        "torch.save = full\n"
        "from mtft.cli.train import main\n"
        "main()\n"
    )
    overrides = [*small_data_overrides(small_tasks), f"trainer.output_dir={tmp_path}", "trainer.max_steps=1"]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    failed = subprocess.run(
        [sys.executable, "-c", fill_disk, *overrides], capture_output=True, text=True, timeout=300, env=env
    )
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert "Traceback" not in failed.stderr
    assert f"writing checkpoint {tmp_path / 'checkpoint-1'} failed" in failed.stderr
    assert "No space left on device" in failed.stderr


def _truncate(file):
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _flip_bytes(file):
    data = bytearray(file.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    file.write_bytes(bytes(data))  # the same size: only the hash can tell


@pytest.mark.parametrize(
    ("name", "damage", "words"),
    [
        (WEIGHTS, _truncate, "truncated"),
        (WEIGHTS, _flip_bytes, "sha256"),
        (ENGINE_STATE, _truncate, "truncated"),
        (ENGINE_STATE, _flip_bytes, "sha256"),
        ("rank_state_0.pt", os.remove, "missing"),
    ],
    ids=["truncated_weights", "flipped_weights", "truncated_engine", "flipped_engine", "missing_rank_state"],
)
def test_damaged_newest_checkpoint_falls_back_with_a_warning(trained, tmp_path, capsys, name, damage, words):
    out = _copy(trained, tmp_path)
    damage(out / "checkpoint-4" / name)
    assert find_resume_checkpoint(out, "auto") == out / "checkpoint-2"
    warning = capsys.readouterr().err
    assert str(out / "checkpoint-4" / name) in warning and words in warning and "skipping checkpoint-4" in warning

    with pytest.raises(ConfigError) as raised:  # asked for by path: no silent substitute
        find_resume_checkpoint(out, str(out / "checkpoint-4"))
    assert raised.value.key == "trainer.resume" and str(out / "checkpoint-4" / name) in str(raised.value)


def test_no_intact_checkpoint_left_is_an_error_naming_the_files(trained, tmp_path):
    out = _copy(trained, tmp_path)
    _truncate(out / "checkpoint-4" / WEIGHTS)
    _flip_bytes(out / "checkpoint-2" / ENGINE_STATE)
    with pytest.raises(ConfigError) as raised:
        find_resume_checkpoint(out, "auto")
    assert raised.value.key == "trainer.resume"
    assert str(out / "checkpoint-4" / WEIGHTS) in str(raised.value)
    assert str(out / "checkpoint-2" / ENGINE_STATE) in str(raised.value)


def test_training_resumes_from_the_intact_checkpoint_and_matches_the_unbroken_run(
    trained, small_tasks, tmp_path, monkeypatch
):
    out = _copy(trained, tmp_path)
    _flip_bytes(out / "checkpoint-4" / ENGINE_STATE)
    loaded = _spy_resumes(monkeypatch)
    train(_config(out, small_tasks, "trainer.resume=auto"))
    assert loaded == ["checkpoint-2"]
    expected, resumed = _records(trained), _records(out)
    for step in (3, 4):
        assert computed(resumed[step]) == computed(expected[step]), step
    assert verify_checkpoint(out / "checkpoint-4") is None  # rewritten whole, over the damaged one


def test_checkpoint_from_before_manifests_still_resumes_exactly(trained, small_tasks, tmp_path):
    """Backward compatibility: a marker that holds only the step, no run_inputs.json, and a rank state with
    NumPy's RNG state as an array (all as older mtft wrote them) resume as before."""
    out = _copy(trained, tmp_path)
    shutil.rmtree(out / "checkpoint-4")
    old = out / "checkpoint-2"
    (old / COMPLETE_MARKER).write_text("2\n")
    (old / "run_inputs.json").unlink()
    rank_state = files.load_rank_state(old / "rank_state_0.pt")
    kind, keys, *rest = rank_state["rng"]["numpy"]
    rank_state["rng"]["numpy"] = (kind, torch.tensor(keys).numpy().astype("uint32"), *rest)
    torch.save(rank_state, old / "rank_state_0.pt")
    with pytest.raises(Exception, match="Weights only load failed"):  # really the old, array-holding format
        torch.load(old / "rank_state_0.pt", weights_only=True)

    assert verify_checkpoint(old) is None
    train(_config(out, small_tasks, "trainer.resume=auto"))
    expected, resumed = _records(trained), _records(out)
    for step in (3, 4):
        assert computed(resumed[step]) == computed(expected[step]), step


def test_unwritable_output_dir_is_refused_before_the_model_loads(dist_group, small_tasks, tmp_path, monkeypatch):
    """Tests run as root, whom permission bits do not stop: a path below a regular file, and /sys (no files can
    be created there, even by root), are places no file can be written."""

    _forbid_model_loading(monkeypatch, "the model loaded before output_dir was checked")
    (tmp_path / "a_file").write_text("not a directory")
    places = [tmp_path / "a_file" / "run"]
    try:
        files.prepare_output_dir(Path("/sys"))
    except ConfigError:
        places.append("/sys")
    for place in places:
        with pytest.raises(ConfigError) as raised:
            train(_config(place, small_tasks))
        assert raised.value.key == "trainer.output_dir" and str(place) in str(raised.value), place


def _forbid_model_loading(monkeypatch, why: str) -> None:
    """Whichever name the run's setup loads the model by, calling it fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(why)

    loaders = [name for name in ("load_model_and_tokenizer", "load_model") if hasattr(components, name)]
    assert loaders
    for name in loaders:
        monkeypatch.setattr(components, name, refuse)
