"""mtft/logging/console.py: the commands that load a trained model read in a log file as mtft-train does. Run as a
user runs them, with stdout and stderr sent to one file: no progress bar drawn as a chain of `\\r` rewrites (the
evaluation's loss bar, generation's bars, datasets' tokenizing bars: the cache is cold), and no FutureWarning
from the libraries (transformers' `is_gradient_checkpointing`, which PEFT calls)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mtft.training.loop import train
from tests.helpers import LAUNCH_VARS, compose_config, small_data_overrides

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def checkpoint(dist_group, small_tasks, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    train(compose_config([*small_data_overrides(small_tasks), "trainer.max_steps=2", f"trainer.output_dir={out}"]))
    return out / "checkpoint-2"


@pytest.mark.parametrize(
    ("module", "out", "written", "args"),
    [
        ("mtft.cli.eval", "eval", "eval/eval.json", ["batch_size=4", "max_new_tokens=4", "max_samples=6"]),
        ("mtft.cli.generate", "answers.jsonl", "answers.jsonl", ["prompt=add 1 2", "max_new_tokens=4"]),
    ],
    ids=["mtft-eval", "mtft-generate"],
)
def test_a_command_writes_plain_lines_to_a_log_file(checkpoint, tmp_path, module, out, written, args):
    log = tmp_path / "log.txt"
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env |= {"WANDB_MODE": "offline", "MTFT_CACHE_DIR": str(tmp_path / "cold_cache")}
    command = [sys.executable, "-m", module, f"checkpoint={checkpoint}", f"out={tmp_path / out}", *args]
    with log.open("w") as file:
        done = subprocess.run(command, stdout=file, stderr=subprocess.STDOUT, env=env, timeout=300)
    text = log.read_bytes().decode(errors="replace")  # read_text() would turn each `\r` into a newline
    assert done.returncode == 0 and (tmp_path / written).is_file(), text[-3000:]
    assert "\r" not in text, text[-3000:]
    assert "FutureWarning" not in text, text[-3000:]
